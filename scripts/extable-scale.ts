/**
 * Memory and time of the exception table at scale (figures in src/snapshot/README.md).
 *
 *   node --expose-gc --import tsx scripts/extable-scale.ts [copies]
 *
 * A 15 TiB device of 64 KiB chunks (251,658,240 chunks). Prints JSON:
 * - `single`: `copies` (default 1,000,000) first writes in random chunk order, one snapshot:
 *   bytes per copy (V8 heap plus typed-array backing stores, which live outside the heap),
 *   insert time per copy, `nextCopied` time at random places, a walk of every run.
 * - `ordered`: the same copies added in chunk order (a table loaded from a checkpoint).
 * - `interleaved`: 100,000 more inserts into the random table, each followed by a query.
 * - `sixSnapshots`: 6 snapshots and 20,000 scattered first writes spread over their eras
 *   (memory: 10 such tables, divided by 10).
 * - `sixVersions`: 20,000 chunks, each copied once for each of 6 snapshots (120,000 copies).
 * Each also times a prune after the newest snapshot is deleted.
 */
import { ExceptionTable, PrivateChunks, type SnapshotRef } from '../src/snapshot/exception-table.ts';
import { rng } from '../test/helpers/random.ts';
import { liveBytes as used } from './heap.ts';

const CHUNK = 64 * 1024;
const CHUNKS = Math.floor((15 * 2 ** 40) / CHUNK);
const COPIES = Number(process.argv[2] ?? 1_000_000);

const snap = (seq: number): SnapshotRef => ({ seq, privateChunks: new PrivateChunks() });
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

/** Distinct random chunk numbers. */
function randomChunks(n: number, seed: number): Float64Array {
  const r = rng(seed);
  const seen = new Set<number>();
  const out = new Float64Array(n);
  for (let i = 0; i < n; ) {
    const c = Math.floor(r() * CHUNKS);
    if (seen.has(c)) continue;
    seen.add(c);
    out[i++] = c;
  }
  return out;
}

function fill(chunks: Float64Array, seq: number) {
  const before = used();
  const t = new ExceptionTable();
  const start = process.hrtime.bigint();
  for (let i = 0; i < chunks.length; i++) t.add(chunks[i] as number, seq, i, i * 2654435761);
  const ns = Number(process.hrtime.bigint() - start);
  const bytes = used() - before;
  return { t, bytesPerCopy: round(bytes / chunks.length), insertNsPerCopy: round(ns / chunks.length, 0) };
}

function queries(t: ExceptionTable, s: SnapshotRef, n: number) {
  const r = rng(99);
  const start = process.hrtime.bigint();
  let found = 0;
  for (let i = 0; i < n; i++) if (t.nextCopied(Math.floor(r() * CHUNKS), s.seq) !== undefined) found += 1;
  const nextNs = Number(process.hrtime.bigint() - start) / n;
  const walkStart = process.hrtime.bigint();
  let walked = 0;
  t.storedRuns(s, 0, CHUNKS, (first, end) => {
    walked += end - first;
  });
  const walkMs = Number(process.hrtime.bigint() - walkStart) / 1e6;
  return { nextNs: round(nextNs, 0), found, walkAllMs: round(walkMs, 1), walked };
}

const chunks = randomChunks(COPIES, 1);
const one = snap(1);

const single = fill(chunks, 1);
const singleQ = queries(single.t, one, 100_000);

// Interleaved: each insert followed by a query (no rebuild between them).
const extra = randomChunks(100_000, 2);
const r = rng(3);
const iStart = process.hrtime.bigint();
for (let i = 0; i < extra.length; i++) {
  const c = extra[i] as number;
  if (single.t.latest(c) === 0) single.t.add(c, 1, COPIES + i, 0);
  single.t.nextCopied(Math.floor(r() * CHUNKS), 1);
}
const interleavedNs = Number(process.hrtime.bigint() - iStart) / extra.length;
// A prune that keeps everything (another snapshot deleted), then one that drops everything.
let freed = 0;
const pStart = process.hrtime.bigint();
single.t.prune([one], () => freed++);
const pruneKeepMs = Number(process.hrtime.bigint() - pStart) / 1e6;
const dStart = process.hrtime.bigint();
single.t.prune([], () => freed++);
const pruneAllMs = Number(process.hrtime.bigint() - dStart) / 1e6;
const singleResult = {
  copies: COPIES,
  bytesPerCopy: single.bytesPerCopy,
  insertNsPerCopy: single.insertNsPerCopy,
  ...singleQ,
  pruneKeepAllMs: round(pruneKeepMs, 1),
  pruneDropAllMs: round(pruneAllMs, 1),
  freed,
};
single.t = undefined as unknown as ExceptionTable;

const sorted = Float64Array.from(chunks).sort();
const ordered = fill(sorted, 1);
const orderedResult = { copies: COPIES, bytesPerCopy: ordered.bytesPerCopy, insertNsPerCopy: ordered.insertNsPerCopy };
ordered.t = undefined as unknown as ExceptionTable;

/** Tables built alike for a memory figure (one small table is too little to weigh). */
const REPEAT = 10;

/** 6 snapshots; `writes` first writes spread over their eras (a copy when the newest snapshot lacks one). */
function sixSnapshots(writes: number, everyEra: boolean) {
  const snaps = [1, 2, 3, 4, 5, 6].map(snap);
  const w = randomChunks(writes, 4);
  const build = () => {
    const rr = rng(5);
    const t = new ExceptionTable();
    let slot = 0;
    for (const s of snaps) {
      if (everyEra) for (let i = 0; i < w.length; i++) t.add(w[i] as number, s.seq, slot++, 0);
      else
        for (let i = 0; i < writes / 6; i++) {
          // Scattered writes, some to chunks written in an earlier era.
          const c = w[Math.floor(rr() * writes)] as number;
          if (t.latest(c) < s.seq) t.add(c, s.seq, slot++, 0);
        }
    }
    return t;
  };
  const before = used();
  const tables = Array.from({ length: REPEAT }, build);
  const bytes = (used() - before) / REPEAT;
  const t = tables[0] as ExceptionTable;
  const copies = t.size;
  const chunkCount = t.chunkCount;
  const q = queries(t, snaps[0] as SnapshotRef, 20_000);
  // The newest snapshot deleted: its copies go, older ones stay.
  used();
  const pStart = process.hrtime.bigint();
  let freed = 0;
  t.prune(snaps.slice(0, 5), () => freed++);
  const pruneNewestMs = Number(process.hrtime.bigint() - pStart) / 1e6;
  return {
    copies,
    chunks: chunkCount,
    bytesPerCopy: round(bytes / copies),
    bytesPerChunk: round(bytes / chunkCount),
    nextNs: q.nextNs,
    walkAllMs: q.walkAllMs,
    pruneNewestMs: round(pruneNewestMs, 1),
    freedByPrune: freed,
  };
}

console.log(
  JSON.stringify({
    device: { bytes: 15 * 2 ** 40, chunkSize: CHUNK, chunks: CHUNKS },
    single: singleResult,
    interleaved: { inserts: extra.length, nsPerInsertAndQuery: round(interleavedNs, 0) },
    ordered: orderedResult,
    sixSnapshots: sixSnapshots(20_000, false),
    sixVersions: sixSnapshots(20_000, true),
    targetBytesPerCopy: 32,
    // For the benchmark (its last line): the single-version case, the one the target is about.
    bytesPerCopy: singleResult.bytesPerCopy,
  }),
);
