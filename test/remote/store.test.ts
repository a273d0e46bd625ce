/**
 * Store ranges on remote NBD exports: `--store nbd://HOST:PORT/EXPORT[:START+COUNT]`, with the
 * ownership rules of file ranges: an export holding data nbdsnap did not create (or a signature)
 * is refused and left untouched; a read-only export is refused; a blank one is formatted.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { hasTool, MiB } from '../helpers/clients.ts';
import { startServer } from '../helpers/server.ts';
import { nbdsnap, Rig, readExport, tempDir } from '../helpers/snapshots.ts';
import { blockData } from './model.ts';
import { startPeer } from './peers.ts';

const tools = hasTool('nbdkit');
const dir = tempDir('nbdsnap-rstore-');
afterAll(() => dir.cleanup());

async function readDirect(uri: string, offset: number, length: number): Promise<Buffer> {
  const c = await NbdClient.open(uri);
  try {
    return await c.read(offset, length);
  } finally {
    await c.close();
  }
}

describe.skipIf(!tools)('a store on a remote NBD export', () => {
  it('uses a range START+COUNT of a blank export, and reopens it by its label', async () => {
    const peer = await startPeer('nbdkit-memory', dir.path, '', 64 * MiB);
    const range = `${peer.uri}:8192+65536`; // 4 MiB..36 MiB of the export
    const rig = new Rig(dir.path, { devices: { disk: 'memory:8M' }, stores: [range] });
    try {
      await rig.start();
      const c = await rig.open('disk');
      await c.write(0, blockData(1));
      await rig.createSnapshot('disk', 'a');
      await c.write(0, blockData(2));
      const status = await rig.cli(['store', 'status']);
      expect(status.stdout).toContain(`${peer.uri}  8192   65536`);
      expect((await rig.readAll('disk@a')).subarray(0, 4096).equals(blockData(1))).toBe(true);
      // The label sits at the range's start on the export, nothing before it was written.
      expect((await readDirect(peer.uri, 4 * MiB, 13)).toString('latin1')).toBe('NBDSNAP-STORE');
      expect((await readDirect(peer.uri, 0, 4 * MiB)).every((b) => b === 0)).toBe(true);
    } finally {
      await rig.stop();
      await peer.kill('SIGTERM');
    }
  });

  it('refuses an export holding data it did not create, and writes nothing to it', async () => {
    const peer = await startPeer('nbdkit-memory', dir.path, '', 64 * MiB);
    try {
      const c = await NbdClient.open(peer.uri);
      await c.write(10 * MiB, Buffer.from('somebody else’s data'));
      await c.flush();
      const before = await readExport(c);
      await c.close();
      await expect(startServer(['disk=memory:8M', '--store', peer.uri])).rejects.toThrow(
        /store range nbd:\/\/127\.0\.0\.1:\d+\/:0\+131072 is not blank: it holds data but no store label; refusing to use it/,
      );
      const after = await NbdClient.open(peer.uri);
      expect((await readExport(after)).equals(before)).toBe(true);
      await after.close();
      // A range elsewhere on the same export that reads as zeros is fine.
      const srv = await startServer(['disk=memory:8M', '--store', `${peer.uri}:65536+65536`]);
      await srv.stop();
    } finally {
      await peer.kill('SIGTERM');
    }
  });

  it('refuses a read-only export, and store format asks for --force over a signature', async () => {
    const ro = await startPeer('nbdkit-memory', dir.path, '', 64 * MiB, ['-r']);
    const rw = await startPeer('nbdkit-memory', dir.path, '', 64 * MiB);
    try {
      await expect(startServer(['disk=memory:8M', '--store', ro.uri])).rejects.toThrow(
        /is read-only; refusing it as a store/,
      );
      const c = await NbdClient.open(rw.uri);
      const ext4 = Buffer.alloc(2); // the ext2/3/4 magic at 1080
      ext4.writeUInt16LE(0xef53);
      await c.write(1080, ext4);
      await c.close();
      const r = await nbdsnap(['store', 'format', rw.uri]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/ext2\/3\/4.*without --force/);
      const f = await nbdsnap(['store', 'format', rw.uri, '--force']);
      expect(f.stderr).toBe('');
      expect(f.stdout).toMatch(/formatted persistent store/);
      const check = await nbdsnap(['store', 'check', rw.uri]);
      expect(check.code).toBe(0);
    } finally {
      await ro.kill('SIGTERM');
      await rw.kill('SIGTERM');
    }
  });
});
