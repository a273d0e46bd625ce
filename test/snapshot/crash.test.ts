/**
 * Crash consistency: the server is SIGKILLed five times at different moments of a heavy random
 * workload (see test/helpers/workload.ts), and restarted each time with exactly the same
 * arguments. After every restart:
 * - every snapshot comes back valid and exact: its content is known at snapshot time (requests
 *   answered before the create are in it, requests in flight are decided from the snapshot as
 *   first read back), whatever copies were in flight at the kill;
 * - a snapshot whose create was cut short by the kill either does not exist or is exactly one
 *   point in time; a snapshot whose delete was cut short is either gone or still exact;
 * - the origin holds every write answered with FUA, and every write answered before a FLUSH that
 *   was answered, except where a later request (answered or not) overwrote it;
 * - a store range appended at run time is part of the store again (not given on the command
 *   line), and copies made into it are read back from it.
 *
 * Kill points: (0) heavy writes with copies going to a freshly appended range, (1) during a
 * snapshot create, (2) right after a snapshot is taken, while nearly every write copies,
 * (3) during a snapshot delete, (4) while snapshot reads and origin writes run together. The
 * kills during a create or delete aim at half the time the previous one took; either outcome
 * (done or not) is then checked.
 * Chunk 4 KiB, device 16 MiB + 1.5 KiB (short last chunk).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, expect, it } from 'vitest';
import {
  assertSame,
  KiB,
  MiB,
  makeImage,
  makeSparse,
  Rig,
  type SnapshotInfo,
  TRIM_ZEROES,
  tempDir,
} from '../helpers/snapshots.ts';
import { stampedImage } from '../helpers/stamps.ts';
import { type Cut, Workload } from '../helpers/workload.ts';

const SIZE = 16 * MiB + 1.5 * KiB;
const CHUNK = 4 * KiB;
const SEED = Number(process.env.NBDSNAP_SEED ?? 0xc4a5);

const dir = tempDir('nbdsnap-crash-');
const image = makeImage(join(dir.path, 'disk.img'), stampedImage(SIZE, 0));
const store1 = makeSparse(join(dir.path, 'store1.img'), 16 * MiB);
const store2 = makeSparse(join(dir.path, 'store2.img'), 64 * MiB);
const rig = new Rig(dir.path, { devices: { disk: image }, stores: [store1], chunkSize: '4K' });

afterAll(async () => {
  await rig.stop('SIGKILL');
  dir.cleanup();
});

/** What the test knows across crashes. */
const snaps = new Map<string, Buffer>();
let pendingCreate: { name: string; cut: Cut; wl: Workload } | undefined;
let pendingDelete: string | undefined;
let previous: Workload | undefined;
let nextSeq = 1;

const where = (what: string) => `${what} (NBDSNAP_SEED=${SEED})`;

/** Restart, and check everything the last run promised. Returns the origin as it is now. */
async function restartAndCheck(cycle: number): Promise<Buffer> {
  await rig.start();
  const origin = await rig.readAll('disk');
  if (previous !== undefined) {
    expect(previous.durabilityFailures(origin), where(`durable writes after kill ${cycle - 1}`)).toEqual([]);
  }
  const list = await rig.list();
  if (pendingCreate !== undefined) {
    const { name, cut, wl } = pendingCreate;
    if (list.some((s) => s.name === name)) {
      const img = await rig.readAll(`disk@${name}`);
      snaps.set(name, wl.resolveCut(cut, img).model);
    }
    pendingCreate = undefined;
  }
  if (pendingDelete !== undefined) {
    if (!list.some((s) => s.name === pendingDelete)) snaps.delete(pendingDelete);
    pendingDelete = undefined;
  }
  const shown = (l: SnapshotInfo[]) => l.map((s) => `${s.name}:${s.state}`).sort();
  expect(shown(list), where(`snapshots after restart ${cycle}`)).toEqual(
    [...snaps.keys()].map((n) => `${n}:valid`).sort(),
  );
  for (const [n, m] of snaps) assertSame(await rig.readAll(`disk@${n}`), m, where(`disk@${n} after restart ${cycle}`));
  return origin;
}

async function startWorkload(cycle: number, origin: Buffer): Promise<Workload> {
  const clients = await Promise.all([0, 1, 2].map(() => rig.open('disk')));
  const wl = new Workload({
    size: SIZE,
    chunkSize: CHUNK,
    clients,
    depth: 8,
    seed: SEED + cycle,
    model: origin,
    firstSeq: nextSeq,
    trimZeroes: TRIM_ZEROES,
    maxOps: 8000,
  });
  wl.start();
  return wl;
}

/** How long the last snapshot create and delete took: kills aim at the middle of the next one. */
const took = { create: 10, delete: 10 };

/** Take a snapshot while the workload runs; its model is decided from its first read. */
async function snapshot(wl: Workload, name: string): Promise<void> {
  const cut = wl.beginCut();
  const t0 = performance.now();
  await rig.createSnapshot('disk', name);
  took.create = performance.now() - t0;
  wl.endCut(cut);
  const img = await rig.readAll(`disk@${name}`);
  const { model } = wl.resolveCut(cut, img);
  assertSame(img, model, where(`disk@${name} as taken`));
  snaps.set(name, model);
}

async function kill(wl: Workload): Promise<void> {
  wl.expectDeath();
  const stopped = rig.stop('SIGKILL');
  await wl.abandon();
  expect(await stopped).toBe('SIGKILL');
  previous = wl;
  nextSeq = wl.nextSeq;
}

it('kill 0: heavy writes, copies going into a range appended at run time', async () => {
  const origin = await restartAndCheck(0);
  const wl = await startWorkload(0, origin);
  await snapshot(wl, 'c0');
  await wl.waitCompleted(100);
  await rig.ctl('store.append', { range: store2 });
  await wl.waitCompleted(700);
  await kill(wl);
});

it('kill 1: in the middle of a snapshot create', async () => {
  const origin = await restartAndCheck(1);
  const store = await rig.ctl<{ ranges: { path: string }[] }>('store.status');
  expect(store.ranges.map((r) => r.path)).toEqual([store1, store2]);
  const wl = await startWorkload(1, origin);
  await snapshot(wl, 'c1');
  await wl.waitCompleted(300);
  const cut = wl.beginCut();
  pendingCreate = { name: 'c1b', cut, wl };
  const created = rig.createSnapshot('disk', 'c1b').catch(() => 'killed');
  await Promise.race([created, sleep(took.create / 2)]);
  await kill(wl);
});

it('kill 2: right after a snapshot, while nearly every write copies', async () => {
  const origin = await restartAndCheck(2);
  const wl = await startWorkload(2, origin);
  await wl.waitCompleted(300);
  await snapshot(wl, 'c2');
  await wl.waitCompleted(60);
  await kill(wl);
});

it('kill 3: in the middle of a snapshot delete', async () => {
  const origin = await restartAndCheck(3);
  const wl = await startWorkload(3, origin);
  await wl.waitCompleted(300);
  const t0 = performance.now();
  await rig.deleteSnapshot('disk', 'c0');
  took.delete = performance.now() - t0;
  snaps.delete('c0');
  await wl.waitCompleted(300);
  pendingDelete = 'c1';
  const deleted = rig.deleteSnapshot('disk', 'c1').catch(() => 'killed');
  await Promise.race([deleted, sleep(took.delete / 2)]);
  await kill(wl);
});

it('kill 4: snapshot reads and origin writes together', async () => {
  const origin = await restartAndCheck(4);
  const wl = await startWorkload(4, origin);
  await snapshot(wl, 'c4');
  const reads = [...snaps.keys()].map((n) => rig.readAll(`disk@${n}`).catch(() => undefined));
  await wl.waitCompleted(500);
  await kill(wl);
  await Promise.all(reads);
});

it('after the last kill: everything is back, and survives a clean restart too', async () => {
  const origin = await restartAndCheck(5);
  const store = await rig.ctl<{ ranges: { path: string }[] }>('store.status');
  expect(store.ranges.map((r) => r.path)).toEqual([store1, store2]);
  // Copies did go to the appended range (so the checks above read them from it).
  expect(readFileSync(store2).some((b) => b !== 0)).toBe(true);
  expect(snaps.size).toBeGreaterThanOrEqual(2);

  const wl = await startWorkload(5, origin);
  await snapshot(wl, 'c5');
  await wl.waitCompleted(300);
  await wl.stop();
  await rig.closeClients();
  const final = Buffer.from(wl.model);
  assertSame(await rig.readAll('disk'), final, 'origin before a clean stop');
  expect(await rig.stop('SIGTERM')).toBe(0);
  previous = undefined;
  const again = await restartAndCheck(6);
  assertSame(again, final, 'origin after a clean restart');
  await rig.stop();
});
