/**
 * Copies as the exception table hands them out (values, compared with `sameCopy`), what the
 * table needs to know of a snapshot, and the helpers of its (seq, slot, crc) triples. See
 * exception-table.ts.
 */

/** A chunk's data in a store slot. `crc` is kept as a signed 32-bit integer (`crc | 0`). */
export interface Copy {
  slot: number;
  crc: number;
  lost: boolean;
}

export interface Version extends Copy {
  seq: number;
}

export type Source = { from: 'origin' } | { from: 'store'; slot: number; crc: number; private: boolean; copy: Copy };

/** A store copy with checksum `crc` (u32 or int32). */
export function copyOf(slot: number, crc: number): Copy {
  return { slot, crc: crc | 0, lost: false };
}

/** Whether two copies are the same one (a held copy is named by its slot; the checksum guards reuse). */
export const sameCopy = (a: Copy, b: Copy): boolean => a.slot === b.slot && (a.crc | 0) === (b.crc | 0);

/** What the table needs to know about a snapshot. */
export interface SnapshotRef {
  readonly seq: number;
  /** Chunks this (writable) snapshot has changed: chunk -> its own copy. */
  readonly privateChunks: Map<number, Copy>;
}

/**
 * `list` with the triple (a, b, c) inserted at `at`, in a new array of exactly its size (a
 * pushed-to array keeps spare room: most of what a chunk's older copies would cost).
 */
export function inserted(list: readonly number[], at: number, a: number, b: number, c: number): number[] {
  const out = new Array<number>(list.length + 3);
  for (let i = 0; i < at; i++) out[i] = list[i] as number;
  out[at] = a;
  out[at + 1] = b;
  out[at + 2] = c;
  for (let i = at; i < list.length; i++) out[i + 3] = list[i] as number;
  return out;
}

/** The snapshots' sequence numbers, ascending. */
export const sortedSeqs = (live: readonly SnapshotRef[]): number[] => live.map((s) => s.seq).sort((a, b) => a - b);

/** Index of the first of `sorted` (ascending) that is > `x`. */
export function firstAbove(sorted: readonly number[], x: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((sorted[mid] as number) > x) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}
