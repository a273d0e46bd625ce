/**
 * A set of block numbers kept as sorted, disjoint, non-adjacent runs [start, end), so its memory
 * follows the number of runs, not the block count. The runs live in typed-array leaves of at most
 * `LEAF` runs (a one-level B+-tree): an insert moves at most one leaf's runs, a query binary
 * searches the leaves and then one leaf, and a full leaf is split in two. Leaves hold 32-bit
 * numbers when every block number fits, else doubles.
 */

/** Most runs a leaf holds before it is split. */
const LEAF = 512;
/** Runs a new leaf has room for; it doubles up to `LEAF`. */
const FIRST_ROOM = 4;

type Numbers = Uint32Array | Float64Array;

interface Leaf {
  /** a[2i] = start, a[2i + 1] = end (exclusive) of run i. */
  a: Numbers;
  /** Runs in use. */
  n: number;
}

/** A position: run `r` of leaf `l` (r = n of the last leaf: past the end). */
interface Pos {
  l: number;
  r: number;
}

/** What an era keeps: a set of block numbers queried by range. */
export interface BlockSet {
  /** Add the blocks [start, end). */
  add(start: number, end: number): void;
  has(block: number): boolean;
  /** Append to `out` the runs inside [lo, hi), clipped to it, as start, end pairs. */
  collect(lo: number, hi: number, out: number[]): void;
  /** Bytes of storage. */
  readonly bytes: number;
}

export class RunSet implements BlockSet {
  private readonly wide: boolean;
  private readonly leaves: Leaf[] = [];
  private count = 0;

  /** `limit`: every block number is below it. */
  constructor(limit: number) {
    this.wide = limit > 0xffffffff;
  }

  /** Number of runs. */
  get size(): number {
    return this.count;
  }

  /** Bytes of typed-array storage (leaf and object headers not counted). */
  get bytes(): number {
    let n = 0;
    for (const leaf of this.leaves) n += leaf.a.byteLength;
    return n;
  }

  private alloc(runs: number): Numbers {
    return this.wide ? new Float64Array(2 * runs) : new Uint32Array(2 * runs);
  }

  /** The first run whose end is >= x. */
  private seekEnd(x: number): Pos {
    return this.seekFirst(1, x);
  }

  /** The first run whose start is > x (block numbers are integers: start >= x + 1). */
  private seekStart(x: number): Pos {
    return this.seekFirst(0, x + 1);
  }

  /** The first run whose start (k = 0) or end (k = 1) is >= y: a binary search over leaves, then in one. */
  private seekFirst(k: 0 | 1, y: number): Pos {
    const leaves = this.leaves;
    let lo = 0;
    let hi = leaves.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const leaf = leaves[mid] as Leaf;
      if ((leaf.a[2 * leaf.n - 2 + k] as number) >= y) hi = mid;
      else lo = mid + 1;
    }
    if (lo === leaves.length) return this.end();
    const a = (leaves[lo] as Leaf).a;
    let r = 0;
    let top = (leaves[lo] as Leaf).n;
    while (r < top) {
      const mid = (r + top) >>> 1;
      if ((a[2 * mid + k] as number) >= y) top = mid;
      else r = mid + 1;
    }
    return { l: lo, r };
  }

  private end(): Pos {
    const l = this.leaves.length - 1;
    return l < 0 ? { l: 0, r: 0 } : { l, r: (this.leaves[l] as Leaf).n };
  }

  /** Add the blocks [start, end), merging with the runs they overlap or touch. */
  add(start: number, end: number): void {
    if (start >= end) return;
    const i = this.seekEnd(start);
    const j = this.seekStart(end);
    if (i.l === j.l && i.r === j.r) {
      this.insertAt(i.l, i.r, start, end);
      return;
    }
    // Runs i .. j-1 overlap or touch [start, end]: they become one run.
    const first = this.leaves[i.l] as Leaf;
    const last = this.leaves[j.l] as Leaf;
    const merged0 = Math.min(start, first.a[2 * i.r] as number);
    const merged1 =
      j.r > 0
        ? (last.a[2 * j.r - 1] as number)
        : ((this.leaves[j.l - 1] as Leaf).a[2 * (this.leaves[j.l - 1] as Leaf).n - 1] as number);
    first.a[2 * i.r] = merged0;
    first.a[2 * i.r + 1] = Math.max(end, merged1);
    if (i.l === j.l) {
      first.a.copyWithin(2 * i.r + 2, 2 * j.r, 2 * first.n);
      const removed = j.r - i.r - 1;
      first.n -= removed;
      this.count -= removed;
      return;
    }
    let removed = first.n - i.r - 1 + j.r;
    first.n = i.r + 1;
    last.a.copyWithin(0, 2 * j.r, 2 * last.n);
    last.n -= j.r;
    for (let l = i.l + 1; l < j.l; l++) removed += (this.leaves[l] as Leaf).n;
    this.leaves.splice(i.l + 1, j.l - i.l - 1 + (last.n === 0 ? 1 : 0));
    this.count -= removed;
  }

  private insertAt(l: number, r: number, start: number, end: number): void {
    if (this.leaves.length === 0) this.leaves.push({ a: this.alloc(FIRST_ROOM), n: 0 });
    let leaf = this.leaves[l] as Leaf;
    if (2 * leaf.n === leaf.a.length) {
      if (leaf.n < LEAF) {
        const a = this.alloc(2 * leaf.n);
        a.set(leaf.a);
        leaf.a = a;
      } else {
        const half = LEAF >>> 1;
        const right = { a: this.alloc(LEAF), n: leaf.n - half };
        right.a.set(leaf.a.subarray(2 * half, 2 * leaf.n));
        leaf.n = half;
        this.leaves.splice(l + 1, 0, right);
        if (r > half) {
          leaf = right;
          r -= half;
        }
      }
    }
    leaf.a.copyWithin(2 * r + 2, 2 * r, 2 * leaf.n);
    leaf.a[2 * r] = start;
    leaf.a[2 * r + 1] = end;
    leaf.n++;
    this.count++;
  }

  has(block: number): boolean {
    const p = this.seekEnd(block + 1);
    const leaf = this.leaves[p.l];
    return leaf !== undefined && p.r < leaf.n && (leaf.a[2 * p.r] as number) <= block;
  }

  /** Call `fn` with every run, in order, without collecting them. */
  each(fn: (start: number, end: number) => void): void {
    for (const leaf of this.leaves)
      for (let r = 0; r < leaf.n; r++) fn(leaf.a[2 * r] as number, leaf.a[2 * r + 1] as number);
  }

  /** Append to `out` the runs inside [lo, hi), clipped to it, as start, end pairs. */
  collect(lo: number, hi: number, out: number[]): void {
    if (lo >= hi) return;
    const p = this.seekEnd(lo + 1);
    for (let l = p.l, r = p.r; l < this.leaves.length; l++, r = 0) {
      const leaf = this.leaves[l] as Leaf;
      for (; r < leaf.n; r++) {
        const start = leaf.a[2 * r] as number;
        if (start >= hi) return;
        out.push(Math.max(start, lo), Math.min(leaf.a[2 * r + 1] as number, hi));
      }
    }
  }
}

/** Sorted, disjoint, non-adjacent block runs: what `CbtTracker.changed` answers. */
export class BlockRuns {
  /** start, end pairs. */
  private readonly pairs: readonly number[];

  constructor(pairs: readonly number[]) {
    this.pairs = pairs;
  }

  /** start, end (exclusive) of run i, for i < length. */
  start(i: number): number {
    return this.pairs[2 * i] as number;
  }

  end(i: number): number {
    return this.pairs[2 * i + 1] as number;
  }

  /** Number of runs. */
  get length(): number {
    return this.pairs.length >>> 1;
  }

  has(block: number): boolean {
    let lo = 0;
    let hi = this.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.end(mid) > block) hi = mid;
      else lo = mid + 1;
    }
    return lo < this.length && this.start(lo) <= block;
  }

  /** Number of blocks. */
  count(): number {
    let n = 0;
    for (let i = 0; i < this.length; i++) n += this.end(i) - this.start(i);
    return n;
  }

  /** Runs as [first, count]. */
  *runs(): IterableIterator<[number, number]> {
    for (let i = 0; i < this.length; i++) yield [this.start(i), this.end(i) - this.start(i)];
  }
}

/** Merge two sorted run lists (start, end pairs), joining runs that overlap or touch. */
function mergeTwo(a: readonly number[], b: readonly number[]): number[] {
  const out: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    let s: number;
    let e: number;
    if (j >= b.length || (i < a.length && (a[i] as number) <= (b[j] as number))) {
      s = a[i] as number;
      e = a[i + 1] as number;
      i += 2;
    } else {
      s = b[j] as number;
      e = b[j + 1] as number;
      j += 2;
    }
    const n = out.length;
    if (n > 0 && s <= (out[n - 1] as number)) out[n - 1] = Math.max(out[n - 1] as number, e);
    else out.push(s, e);
  }
  return out;
}

/** The union of `sets` inside the blocks [lo, hi), in O(k log n + runs found × log k). */
export function unionOf(sets: readonly BlockSet[], lo: number, hi: number): BlockRuns {
  let lists = sets.map((set) => {
    const out: number[] = [];
    set.collect(lo, hi, out);
    return out;
  });
  lists = lists.filter((l) => l.length > 0);
  while (lists.length > 1) {
    const next: number[][] = [];
    for (let i = 0; i < lists.length; i += 2) {
      const b = lists[i + 1];
      next.push(b === undefined ? (lists[i] as number[]) : mergeTwo(lists[i] as number[], b));
    }
    lists = next;
  }
  return new BlockRuns(lists[0] ?? []);
}
