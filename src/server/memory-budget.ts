/**
 * One memory budget shared by every NBD connection of a server (`--max-buffer`). A connection
 * reserves the bytes of a request before it holds them: a WRITE's payload before it is read from
 * the socket, a READ's reply before it is produced; it gives them back once the WRITE is done or
 * the READ's reply has been handed to the kernel. A connection whose reservation is refused stops
 * reading its socket and waits its turn; the kernel's socket buffer, not this process, holds
 * what the client sends meanwhile.
 *
 * Rules (pure bookkeeping, no I/O):
 * - a request of at most a quarter of the budget is granted while it fits in the budget;
 * - a larger ("big") request is granted only while it fits in three quarters, so that big
 *   requests held by stalled clients (a WRITE whose payload never completes, READ replies never
 *   read) always leave a quarter of the budget to everyone else;
 * - a request larger than that is granted when nothing at all is reserved: it is served alone,
 *   never refused for good.
 * Waiters are woken in arrival order each time bytes come back; a waiter that still does not fit
 * keeps its place, and those behind it may go (a big waiter does not block small ones).
 */
export const DEFAULT_MAX_BUFFER = 64 * 1024 * 1024;

export class MemoryBudget {
  readonly limit: number;
  private usedBytes = 0;
  private peakBytes = 0;
  /** Waiting connections' retry functions: each returns true once it no longer waits. */
  private readonly waiters = new Set<() => boolean>();
  private waking = false;
  private again = false;

  constructor(limit: number = DEFAULT_MAX_BUFFER) {
    this.limit = limit;
  }

  get used(): number {
    return this.usedBytes;
  }

  /** The most ever reserved at once (metrics, tests). */
  get peak(): number {
    return this.peakBytes;
  }

  get waiting(): number {
    return this.waiters.size;
  }

  /** Whether `n` bytes can be reserved now. */
  fits(n: number): boolean {
    if (n <= 0) return true;
    if (this.usedBytes === 0) return true;
    const ceiling = n > this.limit / 4 ? this.limit - this.limit / 4 : this.limit;
    return this.usedBytes + n <= ceiling;
  }

  /** Reserve `n` bytes if they fit; false when the caller must wait (see `wait`). */
  tryTake(n: number): boolean {
    if (!this.fits(n)) return false;
    this.usedBytes += Math.max(0, n);
    this.peakBytes = Math.max(this.peakBytes, this.usedBytes);
    return true;
  }

  /** Give back `n` bytes reserved earlier, and let waiters retry. */
  give(n: number): void {
    if (n <= 0) return;
    this.usedBytes = Math.max(0, this.usedBytes - n);
    this.wake();
  }

  /** Queue `retry` (once): it is called as bytes come back, until it returns true. */
  wait(retry: () => boolean): void {
    this.waiters.add(retry);
  }

  /** Leave the queue (a connection that closed). */
  cancel(retry: () => boolean): void {
    this.waiters.delete(retry);
  }

  private wake(): void {
    if (this.waking) {
      this.again = true; // a retry gave bytes back: go round once more
      return;
    }
    this.waking = true;
    try {
      do {
        this.again = false;
        for (const retry of [...this.waiters]) {
          if (!this.waiters.has(retry)) continue;
          if (retry()) this.waiters.delete(retry);
        }
      } while (this.again && this.waiters.size > 0);
    } finally {
      this.waking = false;
    }
  }
}
