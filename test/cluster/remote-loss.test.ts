/**
 * Losing the qemu-nbd that serves the RBD image under an nbdsnap origin, while clients write:
 * every request is answered (OK after a reconnect, or an error once --remote-timeout has passed;
 * none is dropped or left hanging), no read returns bytes the writes cannot explain, and every
 * snapshot listed valid afterwards reads exactly as its point in time (test/cluster/history.ts);
 * a snapshot that cannot must be listed invalid. Writes are sent with FUA, so an acknowledged
 * write is in the RBD image even though qemu-nbd caches (writeback) and is killed with SIGKILL.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CEPH_SKIP, type CephCluster, startCeph } from '../helpers/ceph.ts';
import { MiB, tempDir } from '../helpers/snapshots.ts';
import { History, Writers } from './history.ts';
import { LOCAL_ORIGIN, type RbdRig, type RbdRigOptions, rbdRig } from './rbd-rig.ts';

const SIZE = 16 * MiB;

describe.skipIf(CEPH_SKIP || LOCAL_ORIGIN)('the qemu-nbd serving an RBD origin is killed during writes', () => {
  const dir = tempDir('nbdsnap-cluster-loss-');
  let ceph: CephCluster;
  const rigs: RbdRig[] = [];

  beforeAll(async () => {
    ceph = await startCeph();
  });
  afterAll(async () => {
    for (const r of rigs) await r.rig.stop('SIGKILL');
    await ceph?.stop();
    dir.cleanup();
  });

  /** Every snapshot listed valid reads as the history allows at its point; returns the states. */
  async function checkSnapshots(r: RbdRig, history: History, points: Map<string, [number, number]>) {
    const states: Record<string, string> = {};
    for (const s of await r.rig.list()) {
      states[s.name] = s.state;
      if (s.state !== 'valid') continue;
      const [t0, t1] = points.get(s.name) as [number, number];
      expect(
        history.judge(await r.rig.readAll(`${r.image}@${s.name}`), 0, t0, t1),
        `${s.export} is listed valid`,
      ).toEqual([]);
    }
    return states;
  }

  async function snapshot(r: RbdRig, history: History, points: Map<string, [number, number]>, name: string) {
    const t0 = history.tick();
    await r.rig.createSnapshot(r.image, name);
    points.set(name, [t0, history.tick()]);
  }

  /** An nbdsnap started in front of RBD image `image`, a history of its writes, and snapshot "before". */
  async function setUp(image: string, o: RbdRigOptions) {
    const r = await rbdRig(ceph, dir.path, image, o);
    rigs.push(r);
    await r.rig.start();
    const history = new History(SIZE, 0);
    const points = new Map<string, [number, number]>();
    await snapshot(r, history, points, 'before');
    return { r, history, points };
  }

  /** Two clients of the origin writing with FUA (a quarter of the requests read back), 4 in flight each. */
  async function startWriters(r: RbdRig, history: History, seed: number): Promise<Writers> {
    const clients = await Promise.all([r.rig.open(r.image), r.rig.open(r.image)]);
    const opts = { clients, depth: 4, seed, firstSeq: 1, fua: 1, reads: 0.25, maxWrite: 256 * 1024 };
    const writers = new Writers(history, opts);
    writers.start();
    return writers;
  }

  /** Wait until `n` requests have failed (at most a minute: each fails about --remote-timeout after it was sent). */
  async function waitErrors(writers: Writers, n: number): Promise<void> {
    const deadline = Date.now() + 60_000;
    while (writers.errors.length < n && Date.now() < deadline) await sleep(100);
  }

  it('killed and restarted within --remote-timeout: requests complete after the reconnect', async () => {
    const { r, history, points } = await setUp('vol', { size: SIZE, extra: ['--remote-timeout', '60'] });
    const ex = r.ex as NonNullable<RbdRig['ex']>;
    const writers = await startWriters(r, history, 31);
    let atKill = 0;
    try {
      await writers.waitOps(80);
      atKill = history.tick();
      await ex.kill('SIGKILL');
      await sleep(2000);
      // a snapshot asked for while the remote is gone: it waits for the requests in flight
      const t0 = history.tick();
      const during = r.rig.createSnapshot('vol', 'during').then(
        () => 'ok',
        (err: unknown) => String(err),
      );
      await ex.restart();
      const created = await during;
      if (created === 'ok') points.set('during', [t0, history.tick()]);
      await writers.waitOps(80, 120_000);
      await snapshot(r, history, points, 'after');
      await writers.waitOps(40, 120_000);
    } finally {
      await writers.stop();
    }
    // the kill did catch requests in flight, and the writers went on after it
    expect(history.writes.some((w) => w.sent < atKill && w.done > atKill)).toBe(true);
    expect(history.writes.filter((w) => w.sent > atKill && w.ok).length).toBeGreaterThan(20);
    // within the timeout, nothing failed: each request was retried on the new connection
    expect(writers.errors).toEqual([]);
    expect(writers.mismatches).toEqual([]);
    const states = await checkSnapshots(r, history, points);
    expect(states.before).toBe('valid');
    expect(states.after).toBe('valid');

    const t = history.tick();
    const c = await r.rig.open('vol');
    await c.flush();
    expect(history.judge(await r.rig.readAll('vol'), 0, t, t)).toEqual([]);
    expect(history.judge(await ceph.readImage('vol'), 0, t, t), 'the RBD image').toEqual([]);
  });

  it('gone for longer than --remote-timeout: requests fail with an error, none hangs, snapshots stay exact', async () => {
    const { r, history, points } = await setUp('vol2', { size: SIZE, extra: ['--remote-timeout', '3'] });
    const ex = r.ex as NonNullable<RbdRig['ex']>;
    const writers = await startWriters(r, history, 32);
    try {
      await writers.waitOps(80);
      await ex.kill('SIGKILL');
      await waitErrors(writers, 8); // every request now fails within about the timeout, none waits forever
    } finally {
      await writers.stop(); // resolves only once every request has been answered
    }
    expect(writers.errors.length).toBeGreaterThanOrEqual(8);
    for (const e of writers.errors) expect(e).toMatch(/EIO|Input\/output|I\/O|timed? ?out|ESHUTDOWN|ENOTCONN/i);
    expect(writers.mismatches).toEqual([]);

    // back: new requests succeed again once qemu-nbd has the image (its RBD lock is broken first)
    await ex.restart();
    const c = await r.rig.open('vol2');
    const deadline = Date.now() + 120_000;
    for (;;) {
      try {
        await c.flush();
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(500);
      }
    }
    const again = new Writers(history, { clients: [c], depth: 4, seed: 33, firstSeq: 100_000, fua: 1, reads: 0.25 });
    again.start();
    await again.waitOps(60, 120_000);
    await again.stop();
    expect(again.errors).toEqual([]);
    expect(again.mismatches).toEqual([]);
    await snapshot(r, history, points, 'after');

    const states = await checkSnapshots(r, history, points);
    expect(states.after).toBe('valid');
    const t = history.tick();
    expect(history.judge(await r.rig.readAll('vol2'), 0, t, t)).toEqual([]);
    expect(history.judge(await ceph.readImage('vol2'), 0, t, t), 'the RBD image').toEqual([]);
  });

  it('the store on an RBD image, its qemu-nbd killed: writes that need a copy fail, snapshots never read wrong', async () => {
    await ceph.createImage('store3', 64 * MiB);
    const exStore = await ceph.exportImage('store3');
    const { r, history, points } = await setUp('vol3', {
      size: SIZE,
      stores: [exStore.uri],
      extra: ['--remote-timeout', '3'],
    });
    const writers = await startWriters(r, history, 34);
    let atKill = 0;
    try {
      await writers.waitOps(60);
      atKill = history.tick();
      await exStore.kill('SIGKILL');
      await waitErrors(writers, 8);
    } finally {
      await writers.stop();
    }
    // first writes to chunks the snapshot shares had to fail: their copies could not be made
    expect(writers.errors.length).toBeGreaterThanOrEqual(8);
    expect(writers.mismatches).toEqual([]);
    const failed = history.failed().filter((w) => w.sent > atKill);
    expect(failed.length).toBeGreaterThan(0);

    // the store back: the snapshot is exact (or listed invalid), the origin holds what was acknowledged
    await exStore.restart();
    const deadline = Date.now() + 120_000;
    let states: Record<string, string> | undefined;
    while (states === undefined) {
      try {
        states = await checkSnapshots(r, history, points);
      } catch (err) {
        // reads of the snapshot answer EIO until the store's remote is back; never wrong bytes
        if (Date.now() > deadline || !/EIO|Input\/output|I\/O/i.test(String(err))) throw err;
        await sleep(1000);
      }
    }
    expect(['valid', 'invalid']).toContain(states.before);
    const t = history.tick();
    expect(history.judge(await r.rig.readAll('vol3'), 0, t, t)).toEqual([]);
  });
});
