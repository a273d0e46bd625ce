/**
 * nbdsnap in front of an RBD image served by qemu-nbd (a real single-node Ceph): snapshots taken
 * while writes go on read exactly, a merge rolls the origin back online, and change tracking
 * reports exactly the blocks written. Every check is against a model (test/cluster/history.ts),
 * and what nbdsnap wrote is also read back from Ceph itself (`rbd export`), not only through
 * nbdsnap.
 */
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NbdClient } from '../../src/client/nbd-client.ts';
import { CEPH_SKIP, type CephCluster, startCeph } from '../helpers/ceph.ts';
import { ok, sha256 } from '../helpers/clients.ts';
import { startMerge, waitMergeDone } from '../helpers/merge.ts';
import { KiB, MiB, readExport, tempDir } from '../helpers/snapshots.ts';
import { History, Writers } from './history.ts';
import { LOCAL_ORIGIN, type RbdRig, rbdRig, stampedWrites } from './rbd-rig.ts';

const SIZE = 32 * MiB;
const BLOCK = 64 * KiB; // change-tracking block (the default)

describe.skipIf(CEPH_SKIP)('an origin on an RBD image (qemu-nbd over Ceph)', () => {
  const dir = tempDir('nbdsnap-cluster-origin-');
  let ceph: CephCluster | undefined;
  let r: RbdRig;
  const snapshotBytes = new Map<string, Buffer>();
  let seq = 1;

  beforeAll(async () => {
    if (!LOCAL_ORIGIN) ceph = await startCeph();
    r = await rbdRig(ceph, dir.path, 'vol', { size: SIZE, extra: ['--remote-timeout', '60'] });
    await r.rig.start();
  });
  afterAll(async () => {
    await r?.rig.stop();
    await ceph?.stop();
    dir.cleanup();
  });

  /** The whole origin as Ceph holds it, after a flush through nbdsnap. */
  async function cephView(): Promise<Buffer> {
    const c = await r.rig.open('vol');
    await c.flush();
    if (ceph === undefined) return readExport(c);
    return ceph.readImage('vol');
  }

  it('snapshots taken while writes go on read exactly, then and later', async () => {
    const history = new History(SIZE, 0);
    const clients = await Promise.all([r.rig.open('vol'), r.rig.open('vol')]);
    const writers = new Writers(history, { clients, depth: 4, seed: 11, firstSeq: seq, reads: 0.2 });
    writers.start();
    try {
      for (let k = 0; k < 5; k++) {
        await writers.waitOps(60);
        const t0 = history.tick();
        await r.rig.createSnapshot('vol', `s${k}`);
        const t1 = history.tick();
        // read while the writers go on: the snapshot is the device at one point inside the create call
        const got = await r.rig.readAll(`vol@s${k}`);
        expect(history.judge(got, 0, t0, t1), `vol@s${k}`).toEqual([]);
        snapshotBytes.set(`s${k}`, got);
      }
    } finally {
      await writers.stop();
      seq = writers.nextSeq;
    }
    expect(writers.errors).toEqual([]);
    expect(writers.mismatches).toEqual([]);
    expect(writers.ops).toBeGreaterThan(300);

    // the snapshots did differ from each other (writes went on between them)
    expect(new Set([...snapshotBytes.values()].map(sha256)).size).toBe(snapshotBytes.size);
    const list = await r.rig.list();
    for (const [name, bytes] of snapshotBytes) {
      expect(list.find((s) => s.name === name)?.state).toBe('valid');
      expect((await r.rig.readAll(`vol@${name}`)).equals(bytes), `vol@${name} read again`).toBe(true);
    }
    const t = history.tick();
    const origin = await r.rig.readAll('vol');
    expect(history.judge(origin, 0, t, t)).toEqual([]);
    expect((await cephView()).equals(origin), 'the RBD image holds what nbdsnap acknowledged').toBe(true);
  });

  it('a merge rolls the RBD-backed origin back online, under writes and checked reads', async () => {
    await r.rig.createSnapshot('vol', 'base');
    const base = await r.rig.readAll('vol@base');
    // change the origin a lot after the snapshot
    {
      const history = new History(SIZE, base);
      const c = await r.rig.open('vol');
      const w = new Writers(history, { clients: [c], depth: 8, seed: 12, firstSeq: seq });
      w.start();
      await w.waitOps(200);
      await w.stop();
      seq = w.nextSeq;
      expect(w.errors).toEqual([]);
      await c.flush();
      expect((await r.rig.readAll('vol')).equals(base)).toBe(false);
    }
    // merge; from the call on, the origin reads as the snapshot, and writes win over the copy-back
    const history = new History(SIZE, base);
    const clients = await Promise.all([r.rig.open('vol'), r.rig.open('vol')]);
    const writers = new Writers(history, {
      clients,
      depth: 2,
      seed: 13,
      firstSeq: seq,
      reads: 0.5,
      maxWrite: 64 * KiB,
    });
    await startMerge(r.rig, 'vol', 'base');
    writers.start();
    try {
      await waitMergeDone(r.rig, 'vol@base', 240_000);
      await writers.waitOps(20);
    } finally {
      await writers.stop();
      seq = writers.nextSeq;
    }
    expect(writers.errors).toEqual([]);
    expect(writers.mismatches).toEqual([]);
    expect((await r.rig.list()).some((s) => s.name === 'base')).toBe(false);
    const t = history.tick();
    const origin = await r.rig.readAll('vol');
    expect(history.judge(origin, 0, t, t)).toEqual([]);
    expect((await cephView()).equals(origin), 'the RBD image holds the merged device').toBe(true);
    // the snapshots taken before are still exact
    for (const [name, bytes] of snapshotBytes)
      expect((await r.rig.readAll(`vol@${name}`)).equals(bytes), `vol@${name} after the merge`).toBe(true);
  });

  it('change tracking reports exactly the blocks written between two snapshots', async () => {
    await r.rig.createSnapshot('vol', 'a');
    const c: NbdClient = await r.rig.open('vol');
    const pieces = [
      { offset: 0, length: 512 },
      { offset: 3 * MiB + 4096, length: 4096 },
      { offset: 5 * MiB - 512, length: 1024 }, // across a block boundary
      { offset: 9 * MiB, length: 3 * BLOCK },
      { offset: 20 * MiB + 7 * 512, length: 200 * KiB },
      { offset: SIZE - 512, length: 512 },
    ];
    seq = await stampedWrites(c, pieces, seq);
    await r.rig.createSnapshot('vol', 'b');
    // after b: not in a..b
    seq = await stampedWrites(c, [{ offset: 14 * MiB, length: 4096 }], seq);

    const blocks = (ps: { offset: number; length: number }[]) => {
      const out = new Set<number>();
      for (const p of ps) for (let b = Math.floor(p.offset / BLOCK); b * BLOCK < p.offset + p.length; b++) out.add(b);
      return [...out].sort((x, y) => x - y);
    };
    const want = blocks(pieces);

    const cli = await r.rig.cli(['cbt', 'vol@a', 'vol@b', '--json']);
    const changed = JSON.parse(ok(cli, 'nbdsnap cbt')) as {
      ranges: { offset: number; length: number }[];
      blockSize: number;
    };
    expect(changed.blockSize).toBe(BLOCK);
    expect(blocks(changed.ranges)).toEqual(want);

    const map = spawnSync('nbdinfo', ['--json', '--map=qemu:dirty-bitmap:a', r.rig.uri('vol@b')], { encoding: 'utf8' });
    expect(map.status, map.stderr).toBe(0);
    const extents = JSON.parse(map.stdout) as { offset: number; length: number; type: number }[];
    expect(extents.reduce((n, e) => n + e.length, 0)).toBe(SIZE);
    expect(blocks(extents.filter((e) => (e.type & 1) !== 0))).toEqual(want);

    // since a against the origin now: the later write too
    const now = JSON.parse(ok(await r.rig.cli(['cbt', 'vol@a', '--json']), 'nbdsnap cbt')) as {
      ranges: { offset: number; length: number }[];
    };
    expect(blocks(now.ranges)).toEqual([...want, (14 * MiB) / BLOCK].sort((x, y) => x - y));
  });
});
