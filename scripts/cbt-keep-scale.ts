/**
 * Change tracking over a year of daily snapshots, without a server: the records a running
 * server commits (SNAPSHOT, one CBT per scattered first write, DELETE with the FORGET records of
 * `--cbt-keep-deleted`, built by the same `beyondKeep` as the delete command) folded through the
 * catalog's transition, as a restart replays them. Two histories of CYCLES days on a 15 TiB
 * device with 64 KiB tracking blocks and MARKS scattered marks a day:
 *   once:    snapshot, MARKS marks, delete that snapshot (the cycle);
 *   rolling: snapshot, MARKS marks, delete the snapshot of 7 days before (7 kept).
 * Each with KEEP deleted points kept (default 1) and with every point kept (before FORGET).
 * Prints the eras, points, runs and bytes of the trackers, the heap they take, and the time of
 * the fold (informational: timings vary on a shared machine).
 *
 *   node --expose-gc --import tsx scripts/cbt-keep-scale.ts [CYCLES] [MARKS] [KEEP]
 */
import { beyondKeep } from '../src/cbt/keep.ts';
import { Catalog } from '../src/snapshot/catalog.ts';
import { apply } from '../src/snapshot/transition.ts';
import type { JournalRecord } from '../src/store/records.ts';
import { rng } from '../test/helpers/random.ts';
import { liveBytes as heap } from './heap.ts';

const TiB = 2 ** 40;
const DEVICE = 15 * TiB;
const BLOCK = 64 * 1024;
const CYCLES = Number(process.argv[2] ?? 365);
const MARKS = Number(process.argv[3] ?? 2000);
const KEEP = Number(process.argv[4] ?? 1);
const ROLLING = 7;

interface Result {
  catalog: Catalog;
  records: number;
  forgets: number;
  ms: number;
}

/** Fold a history's records through `apply`, building each delete's batch as the command does. */
function run(history: 'once' | 'rolling', keep: number): Result {
  const random = rng(12345);
  const cat = new Catalog(BLOCK);
  let records = 0;
  let forgets = 0;
  const commit = (batch: JournalRecord[]) => {
    for (const r of batch) apply(cat, r);
    records += batch.length;
  };
  const t = performance.now();
  commit([
    { type: 'DEVICE', device: 1, size: DEVICE, name: 'disk' },
    { type: 'CBT_GEN', device: 1, blockSize: BLOCK, generation: 'gen' },
  ]);
  const blocks = Math.ceil(DEVICE / BLOCK);
  const remove = (name: string) => {
    const snap = [...cat.snapshots.values()].find((s) => s.name === name);
    if (snap === undefined) return;
    const live = new Set(cat.originNamed('disk')?.snapshots.map((s) => s.name));
    live.delete(name);
    const forget = beyondKeep(cat.bookmarks.get(1) ?? new Map(), live, keep);
    forgets += forget.length;
    commit([
      { type: 'DELETE', snapshot: snap.id },
      ...forget.map((n) => ({ type: 'FORGET' as const, device: 1, name: n })),
    ]);
  };
  for (let day = 1; day <= CYCLES; day++) {
    const name = `day${day}`;
    commit([
      {
        type: 'SNAPSHOT',
        created: day,
        name,
        members: [{ snapshot: cat.nextSnapshotId, device: 1, seq: cat.nextSeq, writable: false }],
      },
    ]);
    const era = cat.nextSeq;
    const batch: JournalRecord[] = [];
    for (let i = 0; i < MARKS; i++)
      batch.push({ type: 'CBT', device: 1, era, block: Math.floor(random() * blocks), count: 1 });
    commit(batch);
    remove(history === 'once' ? name : `day${day - ROLLING}`);
  }
  return { catalog: cat, records, forgets, ms: performance.now() - t };
}

function report(history: 'once' | 'rolling', keep: number): void {
  run(history, keep); // once first, so code and one-time allocations are not counted
  const before = heap();
  const r = run(history, keep);
  const after = heap();
  const tracker = r.catalog.trackers.get(1);
  const f = tracker?.footprint() ?? { sparse: 0, dense: 0, bytes: 0 };
  const points = r.catalog.bookmarks.get(1)?.size ?? 0;
  let runs = 0;
  for (const _ of tracker?.changed(0).runs() ?? []) runs++;
  const label = `${history.padEnd(7)} keep ${keep === Number.POSITIVE_INFINITY ? 'all' : String(keep)}`;
  console.log(
    `${label.padEnd(20)} eras ${String(f.sparse + f.dense).padStart(4)} (${f.dense} dense)  points ${String(points).padStart(4)}  ` +
      `changed runs ${String(runs).padStart(7)}  leaves ${(f.bytes / 2 ** 20).toFixed(2).padStart(6)} MiB  ` +
      `catalog heap ${((after - before) / 2 ** 20).toFixed(2).padStart(6)} MiB  ` +
      `records ${r.records} (${r.forgets} FORGET)  fold ${r.ms.toFixed(0)} ms`,
  );
  r.catalog.trackers.clear();
}

console.log(
  `${CYCLES} daily cycles, ${MARKS} scattered 64 KiB marks a day, 15 TiB device (${Math.ceil(DEVICE / BLOCK)} blocks)`,
);
for (const history of ['once', 'rolling'] as const) {
  report(history, KEEP);
  report(history, Number.POSITIVE_INFINITY);
}
