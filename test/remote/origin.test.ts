/**
 * Origins on remote NBD exports (`NAME=nbd://HOST:PORT/EXPORT`): qemu-nbd over raw and qcow2,
 * nbdkit memory (CAN_MULTI_CONN: several connections) and nbdkit file without multi-conn (one).
 * Snapshots taken while writes go on read exactly as the model says; block status, trim and
 * zeroes reach the remote; the remote's data is the origin's.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { hasTool, MiB, nbdsh, run } from '../helpers/clients.ts';
import { Rig, readExport, tempDir } from '../helpers/snapshots.ts';
import { BLOCK, WriteModel } from './model.ts';
import { type PeerKind, startPeer } from './peers.ts';

const SIZE = 16 * MiB;
const tools = hasTool('qemu-nbd') && hasTool('nbdkit');
const dir = tempDir('nbdsnap-remote-');
afterAll(() => dir.cleanup());

const peers: { kind: PeerKind; connections: number }[] = [
  { kind: 'qemu-raw', connections: -1 },
  { kind: 'qemu-qcow2', connections: -1 },
  { kind: 'nbdkit-memory', connections: 4 },
  { kind: 'nbdkit-file-single', connections: 1 },
];

describe.skipIf(!tools)('an origin on a remote NBD export', () => {
  for (const { kind, connections } of peers) {
    it(`${kind}: snapshots taken while writes go on read exactly`, async () => {
      const peer = await startPeer(kind, dir.path, join(dir.path, `${kind}.img`), SIZE);
      const rig = new Rig(dir.path, {
        devices: { disk: peer.uri },
        stores: [join(dir.path, `${kind}-store.img`)],
        extra: ['--log-level', 'debug'],
      });
      await run('truncate', ['-s', String(32 * MiB), join(dir.path, `${kind}-store.img`)]);
      try {
        const srv = await rig.start();
        const connected = srv
          .stderr()
          .split('\n')
          .find((l) => l.includes('"remote origin connected"'));
        if (connections > 0) expect(JSON.parse(connected ?? '{}').connections).toBe(connections);
        const c = await rig.open('disk');
        const model = new WriteModel(Buffer.alloc(SIZE));
        const writing = model.run(c, 4, 150);
        const points: { name: string; from: number; to: number }[] = [];
        for (const name of ['a', 'b', 'c']) {
          await new Promise((r) => setTimeout(r, 30));
          const p = await model.around(() => rig.createSnapshot('disk', name));
          points.push({ name, from: p.from, to: p.to });
        }
        await writing;
        expect(model.failed).toBe(0);
        for (const p of points) {
          const got = await rig.readAll(`disk@${p.name}`);
          expect(model.mismatches(got, p.from, p.to), `disk@${p.name}`).toEqual([]);
        }
        const now = await rig.readAll('disk');
        expect(model.mismatches(now, model.clock, model.clock)).toEqual([]);
        await c.flush();
        // The remote holds the origin's data, read directly from the peer.
        const direct = await NbdClient.open(peer.uri);
        expect((await readExport(direct)).equals(now)).toBe(true);
        await direct.close();
        const list = await rig.list();
        expect(list.map((s) => s.state)).toEqual(['valid', 'valid', 'valid']);
      } finally {
        await rig.stop();
        await peer.kill('SIGTERM');
      }
    });
  }

  it('passes block status, trim and zeroes through to the remote', async () => {
    const peer = await startPeer('nbdkit-memory', dir.path, '', SIZE);
    const rig = new Rig(dir.path, { devices: { disk: peer.uri }, stores: [] });
    try {
      await rig.start();
      const c = await rig.open('disk', ['base:allocation']);
      await c.write(0, Buffer.alloc(2 * MiB, 0x5a));
      await c.write(8 * MiB, Buffer.alloc(MiB, 0x6b));
      const ext = (await c.blockStatus(0, SIZE)).get('base:allocation') ?? [];
      // nbdkit memory reports pages it holds as data, the rest as holes that read as zeros.
      expect(ext[0]).toEqual({ length: 2 * MiB, flags: 0 });
      expect(ext[1]).toEqual({ length: 6 * MiB, flags: 3 });
      await c.trim(0, MiB);
      await c.writeZeroes(MiB, 512 * 1024);
      const direct = await NbdClient.open(peer.uri, { metaContexts: ['base:allocation'] });
      const after = (await direct.blockStatus(0, 2 * MiB)).get('base:allocation') ?? [];
      expect(after[0]).toEqual({ length: MiB + 512 * 1024, flags: 3 });
      expect((await direct.read(MiB + 512 * 1024, 4096))[0]).toBe(0x5a);
      await direct.close();
      // Reads of the origin through nbdsnap see the same.
      const out = await nbdsh(
        'out = [h.can_trim(), h.can_zero(), h.can_flush(), h.can_fua(), list(h.pread(1, 1048576 + 524288)), list(h.pread(1, 0))]',
        rig.uri('disk'),
      );
      expect(out).toEqual([true, true, true, true, [0x5a], [0]]);
    } finally {
      await rig.stop();
      await peer.kill('SIGTERM');
    }
  });

  it('a read-only export is served read-only', async () => {
    const peer = await startPeer('nbdkit-memory', dir.path, '', SIZE, ['-r']);
    const rig = new Rig(dir.path, { devices: { disk: peer.uri }, stores: [] });
    try {
      const srv = await rig.start();
      expect(srv.stderr()).toContain('remote export is read-only');
      const c = await rig.open('disk');
      await expect(c.write(0, Buffer.alloc(BLOCK))).rejects.toMatchObject({ code: 'EPERM' });
    } finally {
      await rig.stop();
      await peer.kill('SIGTERM');
    }
  });
});
