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

/** Most entries a leaf holds before it is split. */
export const LEAF = 512;
/** Entries a new leaf has room for; it doubles up to `LEAF`. */
const FIRST_ROOM = 4;
const U32 = 2 ** 32;
/** Handles: leaf * SPAN + index (SPAN > LEAF). */
const SPAN = 1024;
const NONE = Number.NEGATIVE_INFINITY;

type Keys = Uint32Array | Float64Array;

interface Leaf {
  keys: Keys;
  /** `stride` values an entry. */
  vals: Uint32Array;
  /** Entries in use (at least 1: empty leaves are removed). */
  n: number;
  /** The largest weight held (-Infinity without values). */
  max: number;
  /** The smallest weight held, NaN until needed again after a change (`runEnd`). */
  min: number;
}

const NO_VALUES = new Uint32Array(0);

export class ChunkTree {
  readonly #stride: number;
  /** Most entries a leaf holds (`LEAF`; smaller in tests, to split and merge often). */
  readonly #leaf: number;
  #leaves: Leaf[] = [];
  /** The last key of each leaf (searched without touching the leaves). */
  #last: number[] = [];
  #count = 0;
  #stamp = 0;
  /** Max-tree over the leaves' `max`: node i has children 2i, 2i + 1; leaf l at #base + l. */
  #tree = new Float64Array(2).fill(NONE);
  #base = 1;
  #stale = false;
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
    let n = this.#tree.byteLength;
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
  setVal(h: number, col: number, v: number): void {
    const l = Math.floor(h / SPAN);
    const leaf = this.#leaves[l] as Leaf;
    const at = (h % SPAN) * this.#stride + col;
    const old = leaf.vals[at] as number;
    leaf.vals[at] = v;
    if (col !== 0 || v === old || this.#bulk) return;
    if (v < leaf.min) leaf.min = v;
    else if (old === leaf.min) leaf.min = Number.NaN;
    if (v > leaf.max) {
      leaf.max = v;
      this.#raise(l, v);
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
      if (st > 0 && Number.isNaN(leaf.min)) leaf.min = this.#minOf(leaf);
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
        while (
          j + 1 < leaf.n &&
          keys[j + 1] === (keys[j] as number) + 1 &&
          (leaf.vals[(j + 1) * st] as number) >= min
        )
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
      leaves.push(this.#newLeaf(FIRST_ROOM, key >= U32));
      this.#last.push(key);
      this.#stale = true;
    }
    let l = Math.min(this.#leafFor(key), leaves.length - 1);
    let leaf = leaves[l] as Leaf;
    let r = lowerBound(leaf.keys, leaf.n, key);
    if (r < leaf.n && leaf.keys[r] === key) throw new NbdsnapError('CORRUPT', `chunk ${key} is held already`);
    if (key >= U32 && leaf.keys instanceof Uint32Array) leaf.keys = Float64Array.from(leaf.keys);
    if (leaf.n === leaf.keys.length) {
      if (leaf.n < this.#leaf) this.#grow(leaf, Math.min(this.#leaf, 2 * leaf.n));
      else {
        // Split; an append keeps the left leaf full (keys added in order fill their leaves).
        const s = r === leaf.n ? leaf.n : leaf.n >>> 1;
        const right = this.#newLeaf(this.#leaf, leaf.keys instanceof Float64Array);
        this.#move(leaf, s, leaf.n, right, 0);
        right.n = leaf.n - s;
        this.#clearTail(leaf, s);
        leaf.n = s;
        leaves.splice(l + 1, 0, right);
        this.#last.splice(l, 1, leaf.keys[s - 1] ?? key, right.keys[right.n - 1] ?? key);
        this.#stale = true;
        leaf.max = this.#maxOf(leaf);
        right.max = this.#maxOf(right);
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
      this.#raise(l, leaf.max);
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
    this.#move(leaf, r + 1, leaf.n, leaf, r);
    leaf.n -= 1;
    this.#clearTail(leaf, leaf.n);
    this.#count -= 1;
    this.#stamp += 1;
    if (leaf.n === 0) {
      this.#leaves.splice(l, 1);
      this.#last.splice(l, 1);
      this.#stale = true;
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
    this.#stale = true;
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
      this.#clearTail(leaf, w);
      leaf.n = w;
      leaf.max = this.#maxOf(leaf);
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
    this.#stale = true;
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
      at = this.#nextLeaf(at + 1, min);
      if (at < 0) return -1;
    }
    return -1;
  }

  /** The first leaf >= `l` whose largest weight is >= `min`, or -1. */
  #nextLeaf(l: number, min: number): number {
    if (this.#stale) this.#rebuild();
    const base = this.#base;
    const tree = this.#tree;
    if (l >= this.#leaves.length) return -1;
    let node = base + l;
    if ((tree[node] as number) >= min) return l;
    // Up until a left child whose right sibling holds a large enough weight, then down.
    while (node > 1 && ((node & 1) === 1 || (tree[node + 1] as number) < min)) node >>>= 1;
    if (node <= 1) return -1;
    node += 1;
    while (node < base) node = (tree[2 * node] as number) >= min ? 2 * node : 2 * node + 1;
    return node - base;
  }

  #rebuild(): void {
    const leaves = this.#leaves;
    let base = 1;
    while (base < leaves.length) base *= 2;
    const tree = new Float64Array(2 * base).fill(NONE);
    leaves.forEach((leaf, l) => {
      tree[base + l] = leaf.max;
    });
    for (let node = base - 1; node >= 1; node--)
      tree[node] = Math.max(tree[2 * node] as number, tree[2 * node + 1] as number);
    this.#tree = tree;
    this.#base = base;
    this.#stale = false;
  }

  /** Leaf `l`'s largest weight rose to `w`. */
  #raise(l: number, w: number): void {
    if (this.#stale) return;
    for (let node = this.#base + l; node >= 1; node >>>= 1) {
      if ((this.#tree[node] as number) >= w) break;
      this.#tree[node] = w;
    }
  }

  /** Leaf `l` lost its largest weight: compute it again, and the tree above it. */
  #refreshMax(l: number): void {
    const leaf = this.#leaves[l] as Leaf;
    leaf.max = this.#maxOf(leaf);
    if (this.#stale) return;
    const tree = this.#tree;
    let node = this.#base + l;
    tree[node] = leaf.max;
    for (node >>>= 1; node >= 1; node >>>= 1)
      tree[node] = Math.max(tree[2 * node] as number, tree[2 * node + 1] as number);
  }

  #minOf(leaf: Leaf): number {
    const st = this.#stride;
    let m = Number.POSITIVE_INFINITY;
    for (let i = 0; i < leaf.n; i++) m = Math.min(m, leaf.vals[i * st] as number);
    return m;
  }

  #maxOf(leaf: Leaf): number {
    const st = this.#stride;
    let m = NONE;
    if (st > 0) for (let i = 0; i < leaf.n; i++) m = Math.max(m, leaf.vals[i * st] as number);
    return m;
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
      this.#stale = true;
      return;
    }
  }

  /** Append `b`'s entries to `a` (a's room grows as needed). */
  #append(a: Leaf, b: Leaf): void {
    const need = a.n + b.n;
    if (b.keys instanceof Float64Array && a.keys instanceof Uint32Array) a.keys = Float64Array.from(a.keys);
    if (a.keys.length < need) this.#grow(a, Math.min(this.#leaf, Math.max(need, 2 * a.keys.length)));
    this.#move(b, 0, b.n, a, a.n);
    a.n = need;
    a.max = Math.max(a.max, b.max);
    a.min = Math.min(a.min, b.min);
  }

  /** Copy entries [from, to) of `src` to `dst` at `at` (overlapping moves within a leaf too). */
  #move(src: Leaf, from: number, to: number, dst: Leaf, at: number): void {
    const st = this.#stride;
    if (src === dst) {
      src.keys.copyWithin(at, from, to);
      if (st > 0) src.vals.copyWithin(at * st, from * st, to * st);
      return;
    }
    dst.keys.set(src.keys.subarray(from, to), at);
    if (st > 0) dst.vals.set(src.vals.subarray(from * st, to * st), at * st);
  }

  /** Zero the entries from `n` on, so a leaf's contents depend only on the entries it holds. */
  #clearTail(leaf: Leaf, n: number): void {
    leaf.keys.fill(0, n);
    if (this.#stride > 0) leaf.vals.fill(0, n * this.#stride);
  }

  #grow(leaf: Leaf, room: number): void {
    const keys = leaf.keys instanceof Float64Array ? new Float64Array(room) : new Uint32Array(room);
    keys.set(leaf.keys);
    leaf.keys = keys;
    if (this.#stride > 0) {
      const vals = new Uint32Array(room * this.#stride);
      vals.set(leaf.vals);
      leaf.vals = vals;
    }
  }

  #newLeaf(room: number, wide: boolean): Leaf {
    return {
      keys: wide ? new Float64Array(room) : new Uint32Array(room),
      vals: this.#stride > 0 ? new Uint32Array(room * this.#stride) : NO_VALUES,
      n: 0,
      max: NONE,
      min: Number.POSITIVE_INFINITY,
    };
  }
}

/** First position < n whose key is >= `x` (n if none). */
function lowerBound(keys: Keys, n: number, x: number): number {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((keys[mid] as number) < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
