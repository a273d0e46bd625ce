/**
 * Bounded pipelining: `orderedMap` runs an async function over items with at most `depth` calls
 * in flight and yields the results in item order (backup reads many pieces at once over one NBD
 * connection, but writes records in device order). `Window` bounds writes that may complete in
 * any order (restore).
 */

/**
 * `refillAt`: calls start again only once no more than this many are in flight (default half
 * of `depth`), then up to `depth` at once: the requests of one refill leave in one socket write
 * (fast-reader.ts corks them), not one write per completed call.
 */
export async function* orderedMap<T, R>(
  items: Iterable<T>,
  depth: number,
  fn: (item: T) => Promise<R>,
  refillAt = Math.floor(depth / 2),
): AsyncGenerator<R> {
  const it = items[Symbol.iterator]();
  const queue: Promise<R>[] = [];
  const fill = () => {
    if (queue.length > refillAt) return;
    while (queue.length < depth) {
      const n = it.next();
      if (n.done === true) return;
      const p = fn(n.value);
      p.catch(() => undefined); // awaited below in order; no unhandled rejection meanwhile
      queue.push(p);
    }
  };
  fill();
  while (queue.length > 0) {
    const r = await (queue.shift() as Promise<R>);
    fill();
    yield r;
  }
}

/** At most `depth` operations in flight; the first failure is thrown by `add` or `drain`. */
export class Window {
  private readonly depth: number;
  private readonly inflight = new Set<Promise<void>>();
  private failure: unknown;

  constructor(depth: number) {
    this.depth = depth;
  }

  async add(op: () => Promise<void>): Promise<void> {
    while (this.inflight.size >= this.depth) await Promise.race(this.inflight);
    if (this.failure !== undefined) throw this.failure;
    const p: Promise<void> = op()
      .catch((err) => {
        this.failure ??= err;
      })
      .finally(() => this.inflight.delete(p));
    this.inflight.add(p);
  }

  async drain(): Promise<void> {
    await Promise.all(this.inflight);
    if (this.failure !== undefined) throw this.failure;
  }
}

/**
 * Buffers of one size, reused once the writer has written what was read into them: the reads
 * of a backup then allocate nothing after the first few (no garbage, no fresh pages to fault).
 * `hold(buf, until)` keeps a buffer out until `release(written)` passes `until`.
 */
export class BufferPool {
  private readonly size: number;
  private readonly free: Buffer[] = [];
  private readonly held: [number, Buffer][] = [];

  constructor(size: number) {
    this.size = size;
  }

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
  }

  give(buf: Buffer): void {
    this.free.push(buf);
  }

  hold(buf: Buffer, until: number): void {
    this.held.push([until, buf]);
  }

  release(written: number): void {
    while (this.held.length > 0 && (this.held[0] as [number, Buffer])[0] <= written)
      this.free.push((this.held.shift() as [number, Buffer])[1]);
  }
}
