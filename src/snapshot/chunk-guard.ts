/**
 * Per-chunk coordination between origin writes and snapshot reads of one device:
 * - at most one copy-before-write per chunk is in progress; writers to that chunk wait for it
 *   (`pending`), so one copy serves them all;
 * - snapshot reads that fall through to the origin register as readers of the chunk, and a copy
 *   does not let the origin write through until those reads are done (dm-snap's track_chunk).
 * Everything here is synchronous bookkeeping plus promises: JavaScript runs it atomically.
 */
export class ChunkGuard {
  private readonly pending = new Map<number, Promise<void>>();
  private readonly readers = new Map<number, number>();
  private readonly drained = new Map<number, (() => void)[]>();

  /** The copy of `chunk` in progress, if any. */
  inProgress(chunk: number): Promise<void> | undefined {
    return this.pending.get(chunk);
  }

  /**
   * Take the right to copy `chunk`, synchronously (so a caller can check and take in one step).
   * The caller must call the returned release function when its copy is done.
   */
  claim(chunk: number): () => void {
    let done!: () => void;
    this.pending.set(
      chunk,
      new Promise<void>((r) => {
        done = r;
      }),
    );
    return () => {
      this.pending.delete(chunk);
      done();
    };
  }

  /** Mark origin reads of these chunks as in flight; call the returned function when done. */
  beginRead(chunks: readonly number[]): () => void {
    for (const c of chunks) this.readers.set(c, (this.readers.get(c) ?? 0) + 1);
    return () => {
      for (const c of chunks) {
        const n = (this.readers.get(c) ?? 1) - 1;
        if (n > 0) this.readers.set(c, n);
        else {
          this.readers.delete(c);
          const waiters = this.drained.get(c);
          this.drained.delete(c);
          for (const w of waiters ?? []) w();
        }
      }
    };
  }

  /** Resolves once no origin read of `chunk` is in flight. */
  readersDone(chunk: number): Promise<void> {
    if (!this.readers.has(chunk)) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.drained.get(chunk) ?? [];
      list.push(resolve);
      this.drained.set(chunk, list);
    });
  }
}
