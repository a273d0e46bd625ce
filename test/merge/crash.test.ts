/**
 * Crash consistency of merges: the server is SIGKILLed at 22 points of merges (several merges
 * per server lifetime: each restart finishes the interrupted merge, then the next one is set up
 * and started in the same run) and restarted each time with exactly the same arguments.
 *
 * Each cycle: snapshot `mK` is taken, most of the origin is rewritten, sometimes a newer
 * snapshot `nK` is taken, then `mK` is merged and the server killed: while `merge.start` is on
 * its way (the MERGE record may or may not be durable), after a fraction of a calibrated merge
 * time, or at a given progress (first run, 1/4, 1/2, 3/4, all chunks merged); in half of the
 * cycles while clients write to the origin (stamped requests, FUA, FLUSH: test/helpers/workload.ts);
 * some cycles are killed a second time during the resumed merge. After every restart:
 * - the origin reads, at once, as the snapshot, except where requests sent during the merge
 *   wrote: there each byte is the snapshot's or one of those requests', and every write answered
 *   with FUA or before an answered FLUSH is there (unless a later request overwrote it);
 *   a merge whose start was cut short either resumed (so the above) or never began;
 * - the merge finishes (`merge status` empty, the snapshot released), and the origin then holds
 *   exactly what it read right after the restart;
 * - the long-lived older snapshot `keep` and the newer `nK` are exact throughout.
 * Chunk 4 KiB, device 16 MiB + 2.5 KiB (short last chunk). NBDSNAP_SEED reproduces a run.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, expect, it } from 'vitest';
import { changeChunks, mergeStatus, startMerge, waitMergeDone } from '../helpers/merge.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, Rig, TRIM_ZEROES, tempDir } from '../helpers/snapshots.ts';
import { diffImages, SECTOR, stampedImage } from '../helpers/stamps.ts';
import { Workload } from '../helpers/workload.ts';

const SIZE = 16 * MiB + 2.5 * KiB;
const CHUNK = 4 * KiB;
const SEED = Number(process.env.NBDSNAP_SEED ?? 0xc7a5);
const where = (what: string) => `${what} (NBDSNAP_SEED=${SEED})`;

const dir = tempDir('nbdsnap-merge-crash-');
const rig = new Rig(dir.path, {
  devices: { disk: makeImage(join(dir.path, 'disk.img'), stampedImage(SIZE, 0)) },
  stores: [makeSparse(join(dir.path, 'store.img'), 128 * MiB)],
  chunkSize: '4K',
});

afterAll(async () => {
  await rig.stop('SIGKILL');
  dir.cleanup();
});

interface Plan {
  /** send: kill `value` ms after sending merge.start; time: after value × the calibrated merge time; progress: once value × total chunks are merged. */
  at: 'send' | 'time' | 'progress';
  value: number;
  writers: boolean;
  newer: boolean;
  /** Kill again during the resumed merge, once this fraction is merged. */
  again?: number;
}

const PLANS: Plan[] = [
  { at: 'send', value: 0, writers: false, newer: false },
  { at: 'send', value: 2, writers: false, newer: true },
  { at: 'send', value: 6, writers: false, newer: false },
  { at: 'time', value: 0, writers: true, newer: false },
  { at: 'time', value: 0.1, writers: false, newer: false },
  { at: 'time', value: 0.25, writers: true, newer: true },
  { at: 'time', value: 0.4, writers: false, newer: true, again: 0.7 },
  { at: 'time', value: 0.5, writers: true, newer: false, again: 0.3 },
  { at: 'time', value: 0.6, writers: true, newer: false },
  { at: 'time', value: 0.8, writers: false, newer: false },
  { at: 'time', value: 0.95, writers: true, newer: true },
  { at: 'progress', value: 0.001, writers: false, newer: false },
  { at: 'progress', value: 0.1, writers: true, newer: true },
  { at: 'progress', value: 0.25, writers: true, newer: false, again: 0.5 },
  { at: 'progress', value: 0.5, writers: false, newer: true },
  { at: 'progress', value: 0.75, writers: true, newer: true, again: 0.9 },
  { at: 'progress', value: 1, writers: false, newer: false },
  { at: 'progress', value: 1, writers: true, newer: true },
];
const KILLS = PLANS.length + PLANS.filter((p) => p.again !== undefined).length;

/** What the test knows across crashes. */
let origin = stampedImage(SIZE, 0);
let keep: Buffer | undefined;
let seq = 1;
let mergeMs = 300;

/** `x` is `snap` except where the workload's requests wrote; durable writes are all there. */
function checkAgainst(x: Buffer, snap: Buffer, wl: Workload | undefined, what: string): void {
  if (wl === undefined) {
    assertSame(x, snap, where(what));
    return;
  }
  const lost = wl.durabilityFailures(x).filter((f) => !f.startsWith('no durable request'));
  expect(lost, where(`${what}: durable writes`)).toEqual([]);
  const explained = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++) if (x[i] === snap[i]) explained[i] = 1;
  for (const op of wl.ops) {
    const data =
      op.kind === 'write' ? op.data : op.kind === 'zero' || TRIM_ZEROES ? Buffer.alloc(op.length) : undefined;
    if (data === undefined) continue;
    for (let i = 0; i < op.length; i++) if (x[op.offset + i] === data[i]) explained[op.offset + i] = 1;
  }
  const bad = explained.indexOf(0);
  if (bad >= 0) {
    const at = bad - (bad % SECTOR);
    const d = diffImages(x.subarray(at, at + SECTOR), snap.subarray(at, at + SECTOR), at);
    throw new Error(where(`${what}: byte ${bad} is neither the snapshot's nor any request's: ${d}`));
  }
}

async function kill(wl: Workload | undefined): Promise<void> {
  wl?.expectDeath();
  const stopped = rig.stop('SIGKILL');
  await wl?.abandon();
  expect(await stopped).toBe('SIGKILL');
  if (wl !== undefined) seq = wl.nextSeq;
}

/** Wait until `fraction` of the merge of `label` is done (or it is over). */
async function untilProgress(label: string, fraction: number): Promise<void> {
  for (;;) {
    const p = (await mergeStatus(rig)).find((x) => x.snapshot === label);
    if (p === undefined || (p.merged ?? 0) >= Math.ceil(fraction * (p.total ?? 0))) return;
    await sleep(2);
  }
}

it('calibrates: one merge, not interrupted', async () => {
  await rig.start();
  await rig.createSnapshot('disk', 'keep');
  keep = Buffer.from(origin);
  const c = await rig.open('disk');
  await rig.createSnapshot('disk', 'm');
  const snap = Buffer.from(origin);
  seq = await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.7, seed: SEED, firstSeq: seq });
  const t0 = performance.now();
  await startMerge(rig, 'disk', 'm');
  await waitMergeDone(rig, 'disk@m');
  mergeMs = performance.now() - t0;
  origin = snap;
  assertSame(await rig.readAll('disk'), origin, where('origin after the calibration merge'));
  await rig.closeClients();
  expect(KILLS).toBeGreaterThanOrEqual(20);
});

it.each(PLANS.map((p, i) => ({ ...p, i })))(
  'kill $i: at $at $value, writers $writers, newer $newer, again $again',
  async (plan) => {
    const { i } = plan;
    const label = `disk@m${i}`;
    const c = await rig.open('disk');
    await rig.createSnapshot('disk', `m${i}`);
    const snap = Buffer.from(origin);
    seq = await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.45, seed: SEED + i, firstSeq: seq });
    let newer: Buffer | undefined;
    if (plan.newer) {
      await rig.createSnapshot('disk', `n${i}`);
      newer = Buffer.from(origin);
      seq = await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.1, seed: SEED + 100 + i, firstSeq: seq });
    }
    const before = Buffer.from(origin);
    let wl: Workload | undefined;
    if (plan.at === 'send') {
      const sent = startMerge(rig, 'disk', `m${i}`).catch(() => undefined);
      await Promise.race([sent, sleep(plan.value)]);
    } else {
      await startMerge(rig, 'disk', `m${i}`);
      if (plan.writers) {
        const clients = [c, await rig.open('disk')];
        wl = new Workload({
          size: SIZE,
          chunkSize: CHUNK,
          clients,
          depth: 4,
          seed: SEED + 200 + i,
          model: Buffer.from(snap),
          firstSeq: seq,
          trimZeroes: TRIM_ZEROES,
          maxOps: 4000,
        });
        wl.start();
      }
      if (plan.at === 'time') await sleep(plan.value * mergeMs);
      else await untilProgress(label, plan.value);
    }
    await kill(wl);
    await rig.start();
    let x = await rig.readAll('disk');
    const list = await rig.list();
    const m = list.find((s) => s.name === `m${i}`);
    if (m?.state === 'valid') {
      // The merge never began: only possible when the kill came before merge.start was answered.
      expect(plan.at).toBe('send');
      assertSame(x, before, where(`origin after kill ${i}, merge not begun`));
      expect(await mergeStatus(rig)).toEqual([]);
      await startMerge(rig, 'disk', `m${i}`);
      await waitMergeDone(rig, label);
      x = Buffer.from(snap);
    } else {
      checkAgainst(x, snap, wl, `origin just after restart ${i}`);
      if (plan.again !== undefined) {
        await untilProgress(label, plan.again);
        await kill(undefined);
        await rig.start();
        assertSame(await rig.readAll('disk'), x, where(`origin after the second kill in cycle ${i}`));
      }
      await waitMergeDone(rig, label);
    }
    assertSame(await rig.readAll('disk'), x, where(`origin once the merge of m${i} finished`));
    origin = x;
    expect((await rig.list()).map((s) => `${s.name}:${s.state}`)).toEqual([
      'keep:valid',
      ...(newer ? [`n${i}:valid`] : []),
    ]);
    if (i % 4 === 3) assertSame(await rig.readAll('disk@keep'), keep as Buffer, where(`disk@keep in cycle ${i}`));
    if (newer !== undefined) {
      assertSame(await rig.readAll(`disk@n${i}`), newer, where(`disk@n${i} in cycle ${i}`));
      await rig.deleteSnapshot('disk', `n${i}`);
    }
    await rig.closeClients();
  },
);

it('after the last kill: no merge left, and a clean restart keeps the origin', async () => {
  const status = await rig.cli(['merge', 'status']);
  expect(status.stdout.trim()).toBe('no merges');
  expect(await rig.stop('SIGTERM')).toBe(0);
  await rig.start();
  assertSame(await rig.readAll('disk'), origin, where('origin after a clean restart'));
  assertSame(await rig.readAll('disk@keep'), keep as Buffer, where('disk@keep after a clean restart'));
  await rig.stop();
});
