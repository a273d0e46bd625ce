/**
 * An ordered index over the chunk numbers of a keyed collection (the exception table's copies,
 * a snapshot's private chunks), for block status: "the first chunk at or after C whose weight is
 * at least W" in O(log n), so a map of a range walks only the chunks held, never every chunk of
 * the range.
 *
 * The keys are one sorted typed array (4 bytes a chunk while every chunk number fits 32 bits,
 * else 8), plus a max-tree over blocks of `BLOCK` keys holding the largest weight in each block
 * (for the exception table, the weight of a chunk is the sequence number of its newest copy:
 * snapshot s reads chunk c from the store when that is >= s.seq). About 0.5 byte a chunk.
 *
 * The index is a cache of its source, kept lazily:
 * - a key added is remembered in a short pending list and merged in at the next query (O(n));
 *   past `pendingLimit` the whole index is rebuilt from the source instead (O(n log n));
 * - a key removed stays in the array as a dead entry until enough have gathered, then the
 *   index is rebuilt; queries check every key against the source's `weight`, which is
 *   -Infinity for a key no longer held, so a dead entry is never an answer;
 * - a weight that rises is written into the tree at once (O(log n)); one that falls leaves the
 *   tree over-estimating, which costs a little scanning and never a wrong answer.
 */

type Keys = Uint32Array | Float64Array;

/** Keys per leaf of the max-tree. */
const BLOCK = 32;
const U32 = 2 ** 32;

export class ChunkIndex {
  private keys: Keys = new Uint32Array(0);
  /** The keys must be collected again from the source. */
  private stale = false;
  private pending: number[] = [];
  /** Keys removed from the source since the last full build (dead entries, at most). */
  private dead = 0;
  /** Leaves of the max-tree (a power of two); node i has children 2i and 2i + 1; leaves at [leaves, 2 * leaves). */
  private leaves = 1;
  private tree = new Float64Array(2).fill(Number.NEGATIVE_INFINITY);

  /**
   * `source` lists the keys held (any order) and how many; `weight` is a held key's weight and
   * -Infinity for a key not held.
   */
  private readonly source: () => { keys: Iterable<number>; size: number };
  private readonly weight: (chunk: number) => number;

  constructor(source: () => { keys: Iterable<number>; size: number }, weight: (chunk: number) => number) {
    this.source = source;
    this.weight = weight;
  }

  /** `chunk` became held. */
  added(chunk: number): void {
    if (this.stale) return;
    if (this.pending.length >= Math.max(1024, this.keys.length >>> 3)) this.invalidate();
    else this.pending.push(chunk);
  }

  /** `chunk` is no longer held. */
  removed(): void {
    if (this.stale) return;
    this.dead += 1;
    if (this.dead > 64 + (this.keys.length >>> 2)) this.invalidate();
  }

  /** Everything changed (the source was cleared or rebuilt). */
  invalidate(): void {
    this.stale = true;
    this.pending = [];
  }

  /** The weight of held `chunk` rose to `w`. */
  raised(chunk: number, w: number): void {
    // A pending merge or a rebuild recomputes the tree anyway.
    if (this.stale || this.pending.length > 0) return;
    const pos = lowerBound(this.keys, chunk);
    if (this.keys[pos] !== chunk) {
      this.invalidate(); // not indexed: cannot happen while the index is current
      return;
    }
    for (let node = this.leaves + Math.floor(pos / BLOCK); node >= 1; node >>>= 1) {
      if ((this.tree[node] as number) >= w) break;
      this.tree[node] = w;
    }
  }

  /** The smallest held chunk >= `from` whose weight is >= `min`, or undefined. */
  next(from: number, min: number): number | undefined {
    this.refresh();
    const keys = this.keys;
    const n = keys.length;
    let pos = lowerBound(keys, from);
    while (pos < n) {
      const block = Math.floor(pos / BLOCK);
      const blockEnd = Math.min(n, (block + 1) * BLOCK);
      if ((this.tree[this.leaves + block] as number) >= min) {
        for (; pos < blockEnd; pos++) {
          const k = keys[pos] as number;
          if (this.weight(k) >= min) return k;
        }
      }
      const b = this.firstBlockAtLeast(block + 1, min);
      if (b < 0) return undefined;
      pos = b * BLOCK;
    }
    return undefined;
  }

  /** Keys indexed, dead entries included (for tests and memory figures). */
  get length(): number {
    this.refresh();
    return this.keys.length;
  }

  /** The first block >= `block` whose tree value is >= `min`, or -1. */
  private firstBlockAtLeast(block: number, min: number): number {
    const leaves = this.leaves;
    if (block >= leaves) return -1;
    const tree = this.tree;
    let node = leaves + block;
    if ((tree[node] as number) >= min) return block;
    // Up until a left child whose right sibling holds a large enough weight, then down.
    while (node > 1 && ((node & 1) === 1 || (tree[node + 1] as number) < min)) node >>>= 1;
    if (node <= 1) return -1;
    node += 1;
    while (node < leaves) node = (tree[2 * node] as number) >= min ? 2 * node : 2 * node + 1;
    return node - leaves;
  }

  private refresh(): void {
    if (this.stale) this.rebuild();
    else if (this.pending.length > 0) this.merge();
    else return;
    this.buildTree();
  }

  private rebuild(): void {
    const { keys, size } = this.source();
    const all = new Float64Array(size);
    let i = 0;
    let max = -1;
    for (const k of keys) {
      all[i++] = k;
      if (k > max) max = k;
    }
    const sorted = all.subarray(0, i).sort();
    this.keys = max < U32 ? Uint32Array.from(sorted) : Float64Array.from(sorted);
    this.stale = false;
    this.pending = [];
    this.dead = 0;
  }

  /** Merge the pending keys in (dropping duplicates; dead entries stay). */
  private merge(): void {
    const add = Float64Array.from(this.pending).sort();
    this.pending = [];
    const old = this.keys;
    const wide = old instanceof Float64Array || (add[add.length - 1] as number) >= U32;
    const out: Keys = wide ? new Float64Array(old.length + add.length) : new Uint32Array(old.length + add.length);
    let i = 0;
    let j = 0;
    let o = 0;
    let last = -1;
    while (i < old.length || j < add.length) {
      const a = i < old.length ? (old[i] as number) : Number.POSITIVE_INFINITY;
      const b = j < add.length ? (add[j] as number) : Number.POSITIVE_INFINITY;
      const k = Math.min(a, b);
      if (a <= b) i++;
      else j++;
      if (k !== last) out[o++] = k;
      last = k;
    }
    this.keys = o === out.length ? out : out.slice(0, o);
  }

  private buildTree(): void {
    const keys = this.keys;
    const blocks = Math.ceil(keys.length / BLOCK);
    let leaves = 1;
    while (leaves < blocks) leaves *= 2;
    const tree = new Float64Array(2 * leaves).fill(Number.NEGATIVE_INFINITY);
    for (let p = 0; p < keys.length; p++) {
      const w = this.weight(keys[p] as number);
      const node = leaves + Math.floor(p / BLOCK);
      if (w > (tree[node] as number)) tree[node] = w;
    }
    for (let node = leaves - 1; node >= 1; node--) {
      tree[node] = Math.max(tree[2 * node] as number, tree[2 * node + 1] as number);
    }
    this.leaves = leaves;
    this.tree = tree;
  }
}

/** First position whose key is >= `x` (keys ascending). */
function lowerBound(keys: Keys, x: number): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((keys[mid] as number) < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
