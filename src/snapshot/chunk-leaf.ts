/**
 * One leaf of a `ChunkTree` (chunk-tree.ts) and what is done to it: sorted chunk numbers in a
 * typed array (32-bit while they fit, else doubles), `stride` 32-bit values an entry beside
 * them, and the smallest and largest weight (value 0) held.
 */
export type Keys = Uint32Array | Float64Array;

export interface Leaf {
  keys: Keys;
  /** `stride` values an entry. */
  vals: Uint32Array;
  /** Entries in use (at least 1 in a tree: empty leaves are removed). */
  n: number;
  /** The largest weight held (-Infinity without values). */
  max: number;
  /** The smallest weight held, NaN until needed again after a change. */
  min: number;
}

const NO_VALUES = new Uint32Array(0);

export function newLeaf(room: number, wide: boolean, stride: number): Leaf {
  return {
    keys: wide ? new Float64Array(room) : new Uint32Array(room),
    vals: stride > 0 ? new Uint32Array(room * stride) : NO_VALUES,
    n: 0,
    max: Number.NEGATIVE_INFINITY,
    min: Number.POSITIVE_INFINITY,
  };
}

/** Room for `room` entries. */
export function grow(leaf: Leaf, stride: number, room: number): void {
  const keys = leaf.keys instanceof Float64Array ? new Float64Array(room) : new Uint32Array(room);
  keys.set(leaf.keys);
  leaf.keys = keys;
  if (stride > 0) {
    const vals = new Uint32Array(room * stride);
    vals.set(leaf.vals);
    leaf.vals = vals;
  }
}

/** Copy entries [from, to) of `src` to `dst` at `at` (overlapping moves within a leaf too). */
export function move(src: Leaf, from: number, to: number, dst: Leaf, at: number, stride: number): void {
  if (src === dst) {
    src.keys.copyWithin(at, from, to);
    if (stride > 0) src.vals.copyWithin(at * stride, from * stride, to * stride);
    return;
  }
  dst.keys.set(src.keys.subarray(from, to), at);
  if (stride > 0) dst.vals.set(src.vals.subarray(from * stride, to * stride), at * stride);
}

/** Zero the entries from `n` on, so a leaf's contents depend only on the entries it holds. */
export function clearTail(leaf: Leaf, stride: number, n: number): void {
  leaf.keys.fill(0, n);
  if (stride > 0) leaf.vals.fill(0, n * stride);
}

export function maxOf(stride: number, leaf: Leaf): number {
  let m = Number.NEGATIVE_INFINITY;
  if (stride > 0) for (let i = 0; i < leaf.n; i++) m = Math.max(m, leaf.vals[i * stride] as number);
  return m;
}

export function minOf(stride: number, leaf: Leaf): number {
  let m = Number.POSITIVE_INFINITY;
  if (stride > 0) for (let i = 0; i < leaf.n; i++) m = Math.min(m, leaf.vals[i * stride] as number);
  return m;
}

/** First position < n whose key is >= `x` (n if none). */
export function lowerBound(keys: Keys, n: number, x: number): number {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((keys[mid] as number) < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
