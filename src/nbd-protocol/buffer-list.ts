/**
 * A queue of received Buffers that the incremental parsers read from. Data arrives from a
 * socket in arbitrary pieces; `take(n)` hands back exactly n bytes, without copying when they
 * lie inside one piece (the common case for headers and for large WRITE payloads read in one
 * go), and with a single copy otherwise. `skip(n)` discards bytes without keeping them.
 *
 * A piece pushed as `transient` belongs to the caller, who will overwrite it (a read buffer
 * reused for the next read): `takeOwned` never returns a view of it, and `detach()` copies what
 * is left of such pieces before the caller reuses them.
 */
export class BufferList {
  private chunks: Buffer[] = [];
  private head = 0; // bytes of chunks[0] already consumed
  private total = 0;
  /** Pieces still queued that the caller will reuse. */
  private readonly transient = new Set<Buffer>();

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer, transient = false): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    if (transient) this.transient.add(chunk);
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
    return this.copyOut(n, allocate(n));
  }

  /** Remove and return the next n bytes (n <= length); see `peek` for `allocate`. */
  take(n: number, allocate?: (n: number) => Buffer): Buffer {
    const out = this.peek(n, allocate);
    this.skip(n);
    return out;
  }

  /**
   * Like `take`, but the bytes stay valid after the caller reuses its transient pieces: a view
   * only of a piece that is not transient, else a copy into `allocate(n)`.
   */
  takeOwned(n: number, allocate: (n: number) => Buffer = Buffer.allocUnsafe): Buffer {
    const first = this.chunks[0];
    const out =
      first !== undefined && first.length - this.head >= n && !this.transient.has(first)
        ? first.subarray(this.head, this.head + n)
        : this.copyOut(n, allocate(n));
    this.skip(n);
    return out;
  }

  /** Copy the next n bytes (n <= length) into `out` without consuming them. */
  copyOut(n: number, out: Buffer): Buffer {
    let copied = 0;
    let start = this.head;
    for (const c of this.chunks) {
      if (copied === n) break;
      const k = Math.min(c.length - start, n - copied);
      c.copy(out, copied, start, start + k);
      copied += k;
      start = 0;
    }
    return out;
  }

  /**
   * Replace what is left of every transient piece by a copy, so that the caller may reuse them.
   * Returns the bytes copied (0 in the common case: the transient pieces were consumed).
   */
  detach(): number {
    if (this.transient.size === 0) return 0;
    let copied = 0;
    for (let i = 0; i < this.chunks.length; i++) {
      const c = this.chunks[i] as Buffer;
      if (!this.transient.has(c)) continue;
      const from = i === 0 ? this.head : 0;
      const own = Buffer.allocUnsafe(c.length - from);
      c.copy(own, 0, from);
      this.chunks[i] = own;
      if (i === 0) this.head = 0;
      copied += own.length;
    }
    this.transient.clear();
    return copied;
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
        if (this.transient.size > 0) this.transient.delete(c);
        this.head = 0;
      }
    }
    this.total -= dropped;
    return dropped;
  }
}
