/**
 * An ordered map from chunk numbers to a few 32-bit values: the exception table's newest copy of
 * each chunk (its sequence number, slot and checksum) and a snapshot's private chunks (keys
 * only). A one-level B+-tree of typed-array leaves, like src/cbt/runs.ts: a leaf holds at most
 * `LEAF` entries, its keys in one array (32-bit while every key of the leaf fits, else doubles)
 * and their values in another (`stride` 32-bit values an entry). An insert or a removal moves at
 * most one leaf's entries; a full leaf is split in two (an append to the last leaf leaves it
 * full, so keys added in order fill their leaves), and a leaf that falls under a quarter full
 * is merged with a neighbour when both fit in half a leaf.
 *
 * Value 0 of an entry is its weight. Each leaf keeps the largest weight it holds, and a max-tree
 * over the leaves finds the next leaf holding a weight >= W in O(log leaves), so "the first key
 * >= C whose weight is >= W" costs O(log n + LEAF) whatever the keys skipped. The max-tree is
 * kept exact as weights rise and fall, and rebuilt (O(leaves), once) after leaves were split or
 * merged: as cheap as the leaf list's own splice on a split.
 *
 * Entries are named by handles (leaf * SPAN + index), valid until the next insert or removal
 * (`stamp` changes then); changing values keeps them valid.
 */
import { NbdsnapError } from '../errors.ts';
import { clearTail, grow, type Leaf, lowerBound, maxOf, minOf, move, newLeaf } from './chunk-leaf.ts';
import { LeafMaxima } from './leaf-maxima.ts';

/** Most entries a leaf holds before it is split. */
export const LEAF = 512;
/** Entries a new leaf has room for; it doubles up to `LEAF`. */
const FIRST_ROOM = 4;
const U32 = 2 ** 32;
/** Handles: leaf * SPAN + index (SPAN > LEAF). */
const SPAN = 1024;
const NONE = Number.NEGATIVE_INFINITY;

export class ChunkTree {
  readonly #stride: number;
  /** Most entries a leaf holds (`LEAF`; smaller in tests, to split and merge often). */
  readonly #leaf: number;
  #leaves: Leaf[] = [];
  /** The last key of each leaf (searched without touching the leaves). */
  #last: number[] = [];
  #count = 0;
  #stamp = 0;
  /** The next leaf holding a large enough weight. */
  readonly #maxima = new LeafMaxima(() => this.#leaves);
  /** Inside `retain`: the leaves' maxima are computed once at its end. */
  #bulk = false;

  /** `stride`: 32-bit values an entry (0: a set of keys). */
  constructor(stride: number, leaf = LEAF) {
    if (!(Number.isInteger(leaf) && leaf >= 4 && leaf < SPAN)) throw new RangeError(`bad leaf size ${leaf}`);
    this.#stride = stride;
    this.#leaf = leaf;
  }

  get size(): number {
    return this.#count;
  }

  /** Changes with every insert and removal (handles taken before are void). */
  get stamp(): number {
    return this.#stamp;
  }

  /** Bytes of typed-array storage (object headers not counted). */
  get bytes(): number {
    let n = this.#maxima.bytes;
    for (const leaf of this.#leaves) n += leaf.keys.byteLength + leaf.vals.byteLength;
    return n;
  }

  /** Leaves in use (for tests). */
  get leafCount(): number {
    return this.#leaves.length;
  }

  key(h: number): number {
    return (this.#leaves[Math.floor(h / SPAN)] as Leaf).keys[h % SPAN] as number;
  }

  val(h: number, col: number): number {
    return (this.#leaves[Math.floor(h / SPAN)] as Leaf).vals[(h % SPAN) * this.#stride + col] as number;
  }

  /** Set value `col` of entry `h` (a u32; col 0 is the weight). */
  setVal(h: number, col: number, value: number): void {
    const l = Math.floor(h / SPAN);
    const leaf = this.#leaves[l] as Leaf;
    const at = (h % SPAN) * this.#stride + col;
    const old = leaf.vals[at] as number;
    leaf.vals[at] = value;
    const v = leaf.vals[at] as number; // as stored (a u32)
    if (col !== 0 || v === old || this.#bulk) return;
    if (v < leaf.min) leaf.min = v;
    else if (old === leaf.min) leaf.min = Number.NaN;
    if (v > leaf.max) {
      leaf.max = v;
      this.#maxima.raise(l, v);
    } else if (old === leaf.max) this.#refreshMax(l);
  }

  /** The handle of `key`, or -1. */
  find(key: number): number {
    const l = this.#leafFor(key);
    const leaf = this.#leaves[l];
    if (leaf === undefined) return -1;
    const r = lowerBound(leaf.keys, leaf.n, key);
    return r < leaf.n && leaf.keys[r] === key ? l * SPAN + r : -1;
  }

  /** The first entry with key >= `from` and weight >= `min` (any weight for a key set), or -1. */
  next(from: number, min = NONE): number {
    const l = this.#leafFor(from);
    const leaf = this.#leaves[l];
    if (leaf === undefined) return -1;
    return this.#scan(l, lowerBound(leaf.keys, leaf.n, from), min);
  }

  /** The entry after `h` with weight >= `min`, or -1. */
  following(h: number, min = NONE): number {
    return this.#scan(Math.floor(h / SPAN), (h % SPAN) + 1, min);
  }

  /**
   * `h` being an entry of weight >= `min`, the key after the run of consecutive keys from it
   * whose weights are all >= `min`. O(log LEAF) a leaf the run spans when all the leaf's weights
   * are >= `min` (keys are distinct integers: keys r..j are consecutive when key j - key r =
   * j - r), else one step an entry.
   */
  runEnd(h: number, min = NONE): number {
    const leaves = this.#leaves;
    const st = this.#stride;
    let l = Math.floor(h / SPAN);
    let r = h % SPAN;
    for (;;) {
      const leaf = leaves[l] as Leaf;
      const keys = leaf.keys;
      if (st > 0 && Number.isNaN(leaf.min)) leaf.min = minOf(this.#stride, leaf);
      let j = r;
      if (st === 0 || leaf.min >= min) {
        let hi = leaf.n - 1;
        const base = keys[r] as number;
        while (j < hi) {
          const mid = (j + hi + 1) >>> 1;
          if ((keys[mid] as number) - base === mid - r) j = mid;
          else hi = mid - 1;
        }
      } else
        while (j + 1 < leaf.n && keys[j + 1] === (keys[j] as number) + 1 && (leaf.vals[(j + 1) * st] as number) >= min)
          j += 1;
      const end = (keys[j] as number) + 1;
      if (j < leaf.n - 1) return end;
      // The run reaches the end of the leaf: it goes on if the next leaf starts with `end`.
      const next = leaves[l + 1];
      if (next === undefined || next.keys[0] !== end || (st > 0 && (next.vals[0] as number) < min)) return end;
      l += 1;
      r = 0;
    }
  }

  /** Add `key`, which is not held, with values `a`, `b`, `c` (as many as the stride takes). */
  insert(key: number, a = 0, b = 0, c = 0): void {
    if (!Number.isSafeInteger(key) || key < 0) throw new NbdsnapError('CORRUPT', `bad chunk number ${key}`);
    const leaves = this.#leaves;
    if (leaves.length === 0) {
      leaves.push(newLeaf(FIRST_ROOM, key >= U32, this.#stride));
      this.#last.push(key);
      this.#maxima.invalidate();
    }
    let l = Math.min(this.#leafFor(key), leaves.length - 1);
    let leaf = leaves[l] as Leaf;
    let r = lowerBound(leaf.keys, leaf.n, key);
    if (r < leaf.n && leaf.keys[r] === key) throw new NbdsnapError('CORRUPT', `chunk ${key} is held already`);
    if (key >= U32 && leaf.keys instanceof Uint32Array) leaf.keys = Float64Array.from(leaf.keys);
    if (leaf.n === leaf.keys.length) {
      if (leaf.n < this.#leaf) grow(leaf, this.#stride, Math.min(this.#leaf, 2 * leaf.n));
      else {
        // Split; an append keeps the left leaf full (keys added in order fill their leaves).
        const s = r === leaf.n ? leaf.n : leaf.n >>> 1;
        const right = newLeaf(this.#leaf, leaf.keys instanceof Float64Array, this.#stride);
        move(leaf, s, leaf.n, right, 0, this.#stride);
        right.n = leaf.n - s;
        clearTail(leaf, this.#stride, s);
        leaf.n = s;
        leaves.splice(l + 1, 0, right);
        this.#last.splice(l, 1, leaf.keys[s - 1] ?? key, right.keys[right.n - 1] ?? key);
        this.#maxima.invalidate();
        leaf.max = maxOf(this.#stride, leaf);
        right.max = maxOf(this.#stride, right);
        leaf.min = Number.NaN;
        right.min = Number.NaN;
        if (r >= s) {
          leaf = right;
          r -= s;
          l += 1;
        }
      }
    }
    const st = this.#stride;
    leaf.keys.copyWithin(r + 1, r, leaf.n);
    leaf.keys[r] = key;
    if (st > 0) {
      leaf.vals.copyWithin((r + 1) * st, r * st, leaf.n * st);
      leaf.vals[r * st] = a;
      if (st > 1) leaf.vals[r * st + 1] = b;
      if (st > 2) leaf.vals[r * st + 2] = c;
    }
    leaf.n += 1;
    if (r === leaf.n - 1) this.#last[l] = key;
    this.#count += 1;
    this.#stamp += 1;
    if (st > 0 && (leaf.vals[r * st] as number) > leaf.max) {
      leaf.max = leaf.vals[r * st] as number;
      this.#maxima.raise(l, leaf.max);
    }
    if (st > 0 && (leaf.vals[r * st] as number) < leaf.min) leaf.min = leaf.vals[r * st] as number;
  }

  /** Remove `key`; whether it was held. */
  delete(key: number): boolean {
    const h = this.find(key);
    if (h < 0) return false;
    const l = Math.floor(h / SPAN);
    const r = h % SPAN;
    const leaf = this.#leaves[l] as Leaf;
    const st = this.#stride;
    const w = st > 0 ? (leaf.vals[r * st] as number) : NONE;
    move(leaf, r + 1, leaf.n, leaf, r, this.#stride);
    leaf.n -= 1;
    clearTail(leaf, this.#stride, leaf.n);
    this.#count -= 1;
    this.#stamp += 1;
    if (leaf.n === 0) {
      this.#leaves.splice(l, 1);
      this.#last.splice(l, 1);
      this.#maxima.invalidate();
      return true;
    }
    this.#last[l] = leaf.keys[leaf.n - 1] as number;
    if (w === leaf.max) this.#refreshMax(l);
    if (w === leaf.min) leaf.min = Number.NaN;
    if (leaf.n < this.#leaf / 4) this.#mergeAround(l);
    return true;
  }

  /** Keep only the entries for which `keep(handle)` holds; it may change their values. O(n). */
  retain(keep: (h: number) => boolean): void {
    const kept: Leaf[] = [];
    this.#bulk = true;
    try {
      this.#compact(keep, kept);
    } finally {
      this.#bulk = false;
    }
    this.#leaves = kept;
    this.#last = kept.map((leaf) => leaf.keys[leaf.n - 1] as number);
    this.#count = kept.reduce((n, leaf) => n + leaf.n, 0);
    this.#stamp += 1;
    this.#maxima.invalidate();
  }

  /** `retain`'s pass: each leaf compacted in place, small neighbours joined, into `kept`. */
  #compact(keep: (h: number) => boolean, kept: Leaf[]): void {
    const st = this.#stride;
    this.#leaves.forEach((leaf, l) => {
      let w = 0;
      for (let r = 0; r < leaf.n; r++) {
        if (!keep(l * SPAN + r)) continue;
        if (w !== r) {
          leaf.keys[w] = leaf.keys[r] as number;
          if (st > 0) leaf.vals.copyWithin(w * st, r * st, (r + 1) * st);
        }
        w += 1;
      }
      clearTail(leaf, this.#stride, w);
      leaf.n = w;
      leaf.max = maxOf(this.#stride, leaf);
      leaf.min = Number.NaN;
      const prev = kept[kept.length - 1];
      if (w === 0) return;
      if (prev !== undefined && prev.n + w <= this.#leaf / 2) this.#append(prev, leaf);
      else kept.push(leaf);
    });
  }

  clear(): void {
    this.#leaves = [];
    this.#last = [];
    this.#count = 0;
    this.#stamp += 1;
    this.#maxima.invalidate();
  }

  /** First leaf whose last key is >= `key` (the leaf count if none). */
  #leafFor(key: number): number {
    const last = this.#last;
    let lo = 0;
    let hi = last.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((last[mid] as number) >= key) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** From entry `r` of leaf `l` on, the first entry of weight >= `min`, or -1. */
  #scan(l: number, r: number, min: number): number {
    const leaves = this.#leaves;
    const st = this.#stride;
    for (let at = l, from = r; at < leaves.length; from = 0) {
      const leaf = leaves[at] as Leaf;
      if (st === 0) {
        if (from < leaf.n) return at * SPAN + from;
        at += 1;
        continue;
      }
      if (leaf.max >= min)
        for (let i = from; i < leaf.n; i++) if ((leaf.vals[i * st] as number) >= min) return at * SPAN + i;
      at = this.#maxima.first(at + 1, min);
      if (at < 0) return -1;
    }
    return -1;
  }

  /** Leaf `l` lost its largest weight: compute it again, and the tree above it. */
  #refreshMax(l: number): void {
    const leaf = this.#leaves[l] as Leaf;
    leaf.max = maxOf(this.#stride, leaf);
    this.#maxima.update(l, leaf.max);
  }

  /** Merge leaf `l` (under a quarter full) with a neighbour when both fit in half a leaf. */
  #mergeAround(l: number): void {
    const leaves = this.#leaves;
    for (const left of [l - 1, l]) {
      const a = leaves[left];
      const b = leaves[left + 1];
      if (a === undefined || b === undefined || a.n + b.n > this.#leaf / 2) continue;
      this.#append(a, b);
      leaves.splice(left + 1, 1);
      this.#last.splice(left, 2, a.keys[a.n - 1] as number);
      this.#maxima.invalidate();
      return;
    }
  }

  /** Append `b`'s entries to `a` (a's room grows as needed). */
  #append(a: Leaf, b: Leaf): void {
    const need = a.n + b.n;
    if (b.keys instanceof Float64Array && a.keys instanceof Uint32Array) a.keys = Float64Array.from(a.keys);
    if (a.keys.length < need) grow(a, this.#stride, Math.min(this.#leaf, Math.max(need, 2 * a.keys.length)));
    move(b, 0, b.n, a, a.n, this.#stride);
    a.n = need;
    a.max = Math.max(a.max, b.max);
    a.min = Math.min(a.min, b.min);
  }
}
