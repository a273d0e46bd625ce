/**
 * NbdClient.close() against a real server that stopped answering (nbdkit, SIGSTOPped): the soft
 * disconnect sends NBD_CMD_DISC, waits its grace for the server to close, then destroys the
 * socket, so a stop of nbdsnap fronting a remote export never waits on it forever.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { hasTool, MiB } from '../helpers/clients.ts';
import { tempDir } from '../helpers/snapshots.ts';
import { startPeer } from '../remote/peers.ts';

const dir = tempDir('nbdsnap-client-close-');
afterAll(() => dir.cleanup());

describe.skipIf(!hasTool('nbdkit'))('NbdClient.close', () => {
  it('returns once a server that closes is gone, and within its grace when the server stopped', async () => {
    const peer = await startPeer('nbdkit-memory', dir.path, join(dir.path, 'unused'), 8 * MiB);
    try {
      const answering = await NbdClient.open(peer.uri);
      expect((await answering.read(0, 4096)).length).toBe(4096);
      await answering.close(60_000); // the server closes: no need for the grace

      const stalled = await NbdClient.open(peer.uri);
      const pid = peer.proc.child.pid as number;
      process.kill(pid, 'SIGSTOP');
      try {
        // Without the grace this never settles (the test times out).
        await stalled.close(300);
        await expect(stalled.read(0, 4096)).rejects.toThrow(/closed/);
      } finally {
        process.kill(pid, 'SIGCONT');
      }
    } finally {
      await peer.kill();
    }
  }, 30_000);
});
