/**
 * A queue of received Buffers that the incremental parsers read from. Data arrives from a
 * socket in arbitrary pieces; `take(n)` hands back exactly n bytes, without copying when they
 * lie inside one piece (the common case for headers and for large WRITE payloads read in one
 * go), and with a single copy otherwise. `skip(n)` discards bytes without keeping them.
 */
export class BufferList {
  private chunks: Buffer[] = [];
  private head = 0; // bytes of chunks[0] already consumed
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Byte at position i from the read point (i < length). */
  byteAt(i: number): number {
    let pos = this.head + i;
    for (const c of this.chunks) {
      if (pos < c.length) return c[pos] as number;
      pos -= c.length;
    }
    throw new RangeError('BufferList.byteAt past end');
  }

  /**
   * Look at the next n bytes without consuming them (n <= length). When they span pieces they
   * are copied into `allocate(n)` (default: a new buffer).
   */
  peek(n: number, allocate: (n: number) => Buffer = Buffer.allocUnsafe): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length - this.head >= n) {
      return first.subarray(this.head, this.head + n);
    }
    const out = allocate(n);
    let copied = 0;
    let start = this.head;
    for (const c of this.chunks) {
      const k = Math.min(c.length - start, n - copied);
      c.copy(out, copied, start, start + k);
      copied += k;
      start = 0;
      if (copied === n) break;
    }
    return out;
  }

  /** Remove and return the next n bytes (n <= length); see `peek` for `allocate`. */
  take(n: number, allocate?: (n: number) => Buffer): Buffer {
    const out = this.peek(n, allocate);
    this.skip(n);
    return out;
  }

  /** Drop up to n bytes; returns how many were dropped. */
  skip(n: number): number {
    let left = Math.min(n, this.total);
    const dropped = left;
    while (left > 0) {
      const c = this.chunks[0] as Buffer;
      const avail = c.length - this.head;
      if (avail > left) {
        this.head += left;
        left = 0;
      } else {
        left -= avail;
        this.chunks.shift();
        this.head = 0;
      }
    }
    this.total -= dropped;
    return dropped;
  }
}
