/**
 * A writable snapshot's own chunks, ordered for block status and merge planning.
 */
import { ChunkTree } from './chunk-tree.ts';
import type { Copy } from './exception-table.ts';

/**
 * A snapshot's private chunks: a Map that also keeps them ordered (for block status). Changed
 * only by the catalog's transition, like any Map of the catalog.
 */
export class PrivateChunks extends Map<number, Copy> {
  readonly #order = new ChunkTree(0);

  /** Empty (Map's constructor would call `set` with entries before the order exists). */
  // biome-ignore lint/complexity/noUselessConstructor: it takes no entries, unlike Map's
  constructor() {
    super();
  }

  override set(chunk: number, copy: Copy): this {
    if (!this.has(chunk)) this.#order.insert(chunk);
    return super.set(chunk, copy);
  }

  override delete(chunk: number): boolean {
    const had = super.delete(chunk);
    if (had) this.#order.delete(chunk);
    return had;
  }

  override clear(): void {
    super.clear();
    this.#order.clear();
  }

  /** The smallest private chunk >= `from`, or undefined. O(log n). */
  next(from: number): number | undefined {
    const h = this.#order.next(from);
    return h < 0 ? undefined : this.#order.key(h);
  }
}

/** The smallest chunk >= `from` of `chunks` (ordered when it is a `PrivateChunks`). */
export function nextPrivate(chunks: ReadonlyMap<number, Copy>, from: number): number | undefined {
  if (chunks instanceof PrivateChunks) return chunks.next(from);
  let best: number | undefined;
  for (const c of chunks.keys()) if (c >= from && (best === undefined || c < best)) best = c;
  return best;
}
