/**
 * Bounding a tracker's eras by the snapshot points that remain (ZFS drops bookmarks, QEMU merges
 * dirty bitmaps): queries are `changed(from, to)` = the union of the eras in (from, to] with
 * `from` and `to` points (or `to` = now), so
 * - an era at or before the oldest point is never asked for: dropped;
 * - the eras between two adjacent points p < q are only ever asked for together: merged into one
 *   era keyed q;
 * - the eras after the newest point are left as they are (the current era is where marks go).
 * With no point at all, every era before `nextSeq` (the next snapshot's seq, which will be the
 * oldest point) is dropped. Every query between remaining points answers as before.
 *
 * Pure: it changes only the era map it is given.
 */
import { Bitset } from './bitset.ts';
import { type BlockSet, RunSet } from './runs.ts';

/** Blocks visited at once when a bit set's runs are read out (a bound on the temporary list). */
const WINDOW = 1 << 20;

/** Call `fn` with every run [start, end) of `set`, in order. */
export function eachRun(set: BlockSet, limit: number, fn: (start: number, end: number) => void): void {
  if (set instanceof RunSet) {
    set.each(fn);
    return;
  }
  const out: number[] = [];
  for (let lo = 0; lo < limit; lo += WINDOW) {
    out.length = 0;
    set.collect(lo, Math.min(limit, lo + WINDOW), out);
    for (let i = 0; i < out.length; i += 2) fn(out[i] as number, out[i + 1] as number);
  }
}

/**
 * The union of `sets` (blocks below `limit`), reusing one of them (the inputs are dropped
 * after): a bit set if any is one, else the run set with the most runs, which goes dense once
 * its runs outnumber one per `blocksPerRun` blocks, as a marked era does.
 */
export function mergeSets(sets: readonly BlockSet[], limit: number, blocksPerRun: number): BlockSet {
  let base: BlockSet | undefined = sets.find((s) => s instanceof Bitset);
  if (base === undefined) {
    for (const s of sets) if (base === undefined || (s as RunSet).size > (base as RunSet).size) base = s;
  }
  if (base === undefined) return new RunSet(limit);
  let into: BlockSet = base;
  for (const s of sets) {
    if (s === base) continue;
    eachRun(s, limit, (start, end) => into.add(start, end));
    if (into instanceof RunSet && into.size * blocksPerRun > limit) {
      const dense = new Bitset(limit);
      into.each((start, end) => dense.add(start, end));
      into = dense;
    }
  }
  return into;
}

/**
 * Drop and merge the eras of `eras` that no query between `points` (the remaining snapshot
 * points' seqs, any order, duplicates allowed) can ask for; see the file comment.
 */
export function compactEras(
  eras: Map<number, BlockSet>,
  points: readonly number[],
  nextSeq: number,
  limit: number,
  blocksPerRun: number,
): void {
  const sorted = [...new Set(points)].sort((a, b) => a - b);
  const oldest = sorted[0];
  if (oldest === undefined) {
    for (const era of [...eras.keys()]) if (era < nextSeq) eras.delete(era);
    return;
  }
  const newest = sorted[sorted.length - 1] as number;
  // The eras of each interval (p_{i-1}, p_i], by i.
  const groups = new Map<number, number[]>();
  for (const era of [...eras.keys()]) {
    if (era <= oldest) {
      eras.delete(era);
      continue;
    }
    if (era > newest) continue;
    const i = firstAtLeast(sorted, era);
    const group = groups.get(i);
    if (group === undefined) groups.set(i, [era]);
    else group.push(era);
  }
  for (const [i, group] of groups) {
    const key = sorted[i] as number;
    if (group.length === 1 && group[0] === key) continue;
    const merged = mergeSets(
      group.map((era) => eras.get(era) as BlockSet),
      limit,
      blocksPerRun,
    );
    for (const era of group) eras.delete(era);
    eras.set(key, merged);
  }
}

/** The index of the first element of sorted `a` that is >= x (a.length if none). */
function firstAtLeast(a: readonly number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((a[mid] as number) >= x) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}
