/**
 * A max-tree over the largest weight of each leaf of a `ChunkTree` (chunk-tree.ts): the first
 * leaf at or after leaf l that holds a weight >= W, in O(log leaves). Kept exact as a leaf's
 * largest weight rises (`raise`) or falls (`update`); after leaves were split, merged or removed
 * (`invalidate`) it is rebuilt at the next query, in O(leaves): no more than the splice of the
 * leaf list that such a change costs anyway.
 */
const NONE = Number.NEGATIVE_INFINITY;

export class LeafMaxima {
  /** Node i has children 2i and 2i + 1; leaf l is node #base + l. */
  #tree = new Float64Array(2).fill(NONE);
  #base = 1;
  #stale = true;
  /** The leaves' largest weights, read at a rebuild. */
  readonly #leaves: () => readonly { readonly max: number }[];

  constructor(leaves: () => readonly { readonly max: number }[]) {
    this.#leaves = leaves;
  }

  get bytes(): number {
    return this.#tree.byteLength;
  }

  /** The leaves changed: rebuild at the next query. */
  invalidate(): void {
    this.#stale = true;
  }

  /** Leaf `l`'s largest weight rose to `w`. */
  raise(l: number, w: number): void {
    if (this.#stale) return;
    const tree = this.#tree;
    for (let node = this.#base + l; node >= 1; node >>>= 1) {
      if ((tree[node] as number) >= w) break;
      tree[node] = w;
    }
  }

  /** Leaf `l`'s largest weight is now `w` (it fell): the tree above it again. */
  update(l: number, w: number): void {
    if (this.#stale) return;
    const tree = this.#tree;
    let node = this.#base + l;
    tree[node] = w;
    for (node >>>= 1; node >= 1; node >>>= 1)
      tree[node] = Math.max(tree[2 * node] as number, tree[2 * node + 1] as number);
  }

  /** The first leaf >= `l` whose largest weight is >= `min`, or -1. */
  first(l: number, min: number): number {
    if (this.#stale) this.#rebuild();
    const base = this.#base;
    const tree = this.#tree;
    if (l >= this.#leaves().length) return -1;
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
    const leaves = this.#leaves();
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
}
