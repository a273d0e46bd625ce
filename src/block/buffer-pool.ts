/**
 * A pool of large I/O buffers (READ replies, WRITE payloads). A fresh multi-megabyte buffer
 * costs a page fault per 4 KiB on first touch and GC work when dropped, which measured as the
 * main cost of sequential I/O; reusing buffers avoids both. Only buffers handed out by `take()`
 * are ever reused: `give()` ignores anything else, so code that does not return a buffer only
 * leaves it to the garbage collector. A buffer must be given back only when nothing refers to it.
 */
const MIN_POOLED = 64 * 1024;
const MAX_POOLED = 64 * 1024 * 1024;
/** Bytes kept idle in the pool at most. */
const MAX_IDLE_BYTES = 16 * 1024 * 1024;

const free = new Map<number, Buffer[]>();
const ours = new WeakSet<Buffer>();
let idleBytes = 0;

/** A buffer of exactly `length` bytes (contents undefined). */
export function take(length: number): Buffer {
  if (length < MIN_POOLED || length > MAX_POOLED) return Buffer.allocUnsafe(length);
  const list = free.get(length);
  const reused = list?.pop();
  if (reused !== undefined) {
    idleBytes -= length;
    return reused;
  }
  const b = Buffer.allocUnsafeSlow(length);
  ours.add(b);
  return b;
}

/** Return a buffer from `take()` for reuse; anything else is ignored. */
export function give(b: Buffer | undefined): void {
  if (b === undefined || !ours.has(b) || idleBytes + b.length > MAX_IDLE_BYTES) return;
  const list = free.get(b.length) ?? [];
  if (list.includes(b)) return; // given back twice: keep it once
  list.push(b);
  free.set(b.length, list);
  idleBytes += b.length;
}
