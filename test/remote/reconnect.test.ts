/**
 * Losing the remote. The qemu-nbd that serves an origin (qcow2: its metadata cache dies with it)
 * or a store is SIGKILLed while writes go on and started again: clients' requests complete after
 * the reconnect or fail, every acknowledged write is there, and every snapshot listed valid reads
 * exactly. A remote that stays away past --remote-timeout answers EIO, not a hang; a store that
 * is gone makes origin writes fail rather than go on without their copy.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { hasTool, MiB, run } from '../helpers/clients.ts';
import { outcome, Rig, readExport, tempDir } from '../helpers/snapshots.ts';
import { BLOCK, blockData, WriteModel } from './model.ts';
import { startPeer } from './peers.ts';

const SIZE = 16 * MiB;
const tools = hasTool('qemu-nbd') && hasTool('qemu-img');
const dir = tempDir('nbdsnap-reconnect-');
afterAll(() => dir.cleanup());

async function readDirect(uri: string): Promise<Buffer> {
  const c = await NbdClient.open(uri);
  try {
    return await readExport(c);
  } finally {
    await c.close();
  }
}

describe.skipIf(!tools)('losing the remote', () => {
  it('origin: qemu-nbd (qcow2) killed during writes and restarted: acknowledged writes stay, snapshots read exactly', async () => {
    const img = join(dir.path, 'origin.qcow2');
    const peer = await startPeer('qemu-qcow2', dir.path, img, SIZE);
    const store = join(dir.path, 'store1.img');
    await run('truncate', ['-s', String(32 * MiB), store]);
    const rig = new Rig(dir.path, {
      devices: { disk: peer.uri },
      stores: [store],
      extra: ['--remote-timeout', '60'],
    });
    try {
      const srv = await rig.start();
      const c = await rig.open('disk');
      const model = new WriteModel(Buffer.alloc(SIZE));
      const writing = model.run(c, 4, 250);
      await sleep(50);
      const a = await model.around(() => rig.createSnapshot('disk', 'a'));
      await sleep(50);
      await peer.kill('SIGKILL'); // acknowledged, unflushed writes in qcow2's caches are gone
      const during = model.clock;
      await sleep(300);
      // Taken while the remote is away (it flushes the origin: it completes after the reconnect).
      const taking = model.around(() => rig.createSnapshot('disk', 'b'));
      await sleep(100);
      await peer.restart();
      const b = await taking;
      await writing;
      expect(model.writes.some((w) => w.sent >= during)).toBe(true);
      // The timeout (60 s) was never reached: every request completed after the reconnect.
      expect(model.failed).toBe(0);
      expect(srv.stderr()).toContain('"remote reconnected"');
      for (const [name, p] of [
        ['a', a],
        ['b', b],
      ] as const) {
        const got = await rig.readAll(`disk@${name}`);
        expect(model.mismatches(got, p.from, p.to), `disk@${name}`).toEqual([]);
      }
      expect((await rig.list()).map((s) => s.state)).toEqual(['valid', 'valid']);
      const now = await rig.readAll('disk');
      expect(model.mismatches(now, model.clock, model.clock)).toEqual([]);
      // After a FLUSH through nbdsnap, a second crash of the remote loses nothing.
      await c.flush();
      await peer.kill('SIGKILL');
      await peer.restart();
      expect((await readDirect(peer.uri)).equals(now)).toBe(true);
    } finally {
      await rig.stop();
      await peer.kill('SIGTERM');
    }
  });

  it('store: its qemu-nbd killed during writes and restarted: snapshots stay valid and exact, also after a restart of nbdsnap', async () => {
    const origin = join(dir.path, 'origin2.img');
    await run('truncate', ['-s', String(SIZE), origin]);
    const peer = await startPeer('qemu-qcow2', dir.path, join(dir.path, 'store2.qcow2'), 64 * MiB);
    const rig = new Rig(dir.path, {
      devices: { disk: origin },
      stores: [peer.uri],
      extra: ['--remote-timeout', '60'],
    });
    try {
      await rig.start();
      const c = await rig.open('disk');
      const model = new WriteModel(Buffer.alloc(SIZE));
      const first = await model.around(() => rig.createSnapshot('disk', 'a'));
      const writing = model.run(c, 4, 250);
      await sleep(100);
      await peer.kill('SIGKILL');
      await sleep(300);
      await peer.restart();
      const b = await model.around(() => rig.createSnapshot('disk', 'b'));
      await writing;
      expect(model.failed).toBe(0);
      const check = async () => {
        expect((await rig.list()).map((s) => s.state)).toEqual(['valid', 'valid']);
        for (const [name, p] of [
          ['a', first],
          ['b', b],
        ] as const) {
          const got = await rig.readAll(`disk@${name}`);
          expect(model.mismatches(got, p.from, p.to), `disk@${name}`).toEqual([]);
        }
      };
      await check();
      await rig.restart(); // the store is opened again from its remote range 0
      await check();
      await rig.stop('SIGKILL'); // a crash of nbdsnap: the journal on the remote is replayed
      await rig.start();
      await check();
    } finally {
      await rig.stop();
      await peer.kill('SIGTERM');
    }
  });

  it('a remote gone past --remote-timeout answers EIO, and works again once it is back', async () => {
    const img = join(dir.path, 'gone.img');
    const peer = await startPeer('qemu-raw', dir.path, img, SIZE);
    const rig = new Rig(dir.path, { devices: { disk: peer.uri }, stores: [], extra: ['--remote-timeout', '1'] });
    try {
      const srv = await rig.start();
      const c = await rig.open('disk');
      await c.write(0, blockData(1));
      await peer.kill('SIGKILL');
      expect(await outcome(c.write(BLOCK, blockData(2)))).toBe('EIO');
      expect(await outcome(c.read(0, BLOCK))).toBe('EIO');
      expect(await outcome(c.flush())).toBe('EIO');
      expect(srv.stderr()).toContain('no answer within 1 s');
      await peer.restart();
      // Once it is back, within a back-off step, requests are served again.
      let read: Buffer | undefined;
      for (let i = 0; i < 100 && read === undefined; i++) {
        read = await c.read(0, BLOCK).catch(() => undefined);
        if (read === undefined) await sleep(100);
      }
      expect(read?.equals(blockData(1))).toBe(true);
    } finally {
      await rig.stop();
      await peer.kill('SIGTERM');
    }
  });

  it('a store that is gone fails the origin write that needed a copy; the origin is left as it was', async () => {
    const origin = join(dir.path, 'origin4.img');
    await run('truncate', ['-s', String(SIZE), origin]);
    const peer = await startPeer('qemu-raw', dir.path, join(dir.path, 'store4.img'), 64 * MiB);
    const rig = new Rig(dir.path, { devices: { disk: origin }, stores: [peer.uri], extra: ['--remote-timeout', '1'] });
    try {
      await rig.start();
      const c = await rig.open('disk');
      await c.write(0, blockData(1));
      await rig.createSnapshot('disk', 'a');
      await peer.kill('SIGKILL');
      expect(await outcome(c.write(0, blockData(2)))).toBe('EIO');
      expect((await c.read(0, BLOCK)).equals(blockData(1))).toBe(true);
      await peer.restart();
      // Whatever the snapshot's state now, a snapshot listed valid reads exactly.
      let snaps: { state: string }[] = [];
      for (let i = 0; i < 50; i++) {
        snaps = await rig.list();
        if (snaps.length > 0) break;
      }
      if (snaps[0]?.state === 'valid') {
        const got = await rig.readAll('disk@a').catch((e: { code?: string }) => e.code);
        if (Buffer.isBuffer(got)) expect(got.subarray(0, BLOCK).equals(blockData(1))).toBe(true);
        else expect(got).toBe('EIO');
      }
    } finally {
      await rig.stop();
      await peer.kill('SIGTERM');
    }
  });
});
