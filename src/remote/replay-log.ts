/**
 * The replay log of a remote device: every write, write-zeroes and trim sent since the last
 * FLUSH that covered it, in submission order. A write the remote acknowledged is not durable until
 * a flush covers it: if the connection is lost (the remote restarted, and lost its cache with it)
 * before then, it is sent again after the reconnect, with every later entry, before anything new,
 * so that a later flush covers what it claims to cover. An entry leaves the log when a flush that
 * was sent after its acknowledgement succeeds, or when it fails or times out (it is never sent
 * again).
 *
 * Entries are re-sent in submission order, in batches of entries that do not overlap: an entry
 * waits for every earlier entry that overlaps it (the remote may run a batch's requests in any
 * order). Pure: no I/O, no timers.
 */

/** pending: to be sent (again) on the current connection; sent: in flight on it; acked: answered on it. */
export type EntryState = 'pending' | 'sent' | 'acked';

export interface LogEntry<T> {
  readonly seq: number;
  readonly offset: number;
  readonly length: number;
  /** Payload bytes held by the entry (its share of the log's memory). */
  readonly bytes: number;
  readonly item: T;
  state: EntryState;
}

/** Most entries re-sent at once. */
export const REPLAY_BATCH = 256;

export class ReplayLog<T> {
  /** By seq; a Map keeps insertion order, which is submission order. */
  private readonly entries = new Map<number, LogEntry<T>>();
  private held = 0;
  /** Told about every entry that leaves the log (flushed, failed or timed out), after it left. */
  private readonly dropped: ((item: T) => void) | undefined;

  constructor(dropped?: (item: T) => void) {
    this.dropped = dropped;
  }

  get bytes(): number {
    return this.held;
  }
  get size(): number {
    return this.entries.size;
  }

  add(seq: number, offset: number, length: number, bytes: number, item: T): LogEntry<T> {
    const e: LogEntry<T> = { seq, offset, length, bytes, item, state: 'pending' };
    this.entries.set(seq, e);
    this.held += bytes;
    return e;
  }

  /** Every entry, in submission order. */
  values(): IterableIterator<LogEntry<T>> {
    return this.entries.values();
  }

  get(seq: number): LogEntry<T> | undefined {
    return this.entries.get(seq);
  }

  setState(seq: number, state: EntryState): void {
    const e = this.entries.get(seq);
    if (e !== undefined) e.state = state;
  }

  /** The entry failed or timed out: it is never sent again. */
  remove(seq: number): void {
    const e = this.entries.get(seq);
    if (e === undefined) return;
    this.entries.delete(seq);
    this.held -= e.bytes;
    this.dropped?.(e.item);
  }

  /** The connection is gone: every entry must be sent again on the next one. */
  lost(): void {
    for (const e of this.entries.values()) e.state = 'pending';
  }

  /** What a FLUSH sent now covers: the entries acknowledged on the current connection. */
  covered(): number[] {
    const out: number[] = [];
    for (const e of this.entries.values()) if (e.state === 'acked') out.push(e.seq);
    return out;
  }

  /** A flush that covered `seqs` succeeded: they are durable on the remote. Returns the items removed. */
  flushed(seqs: readonly number[]): T[] {
    const out: T[] = [];
    for (const seq of seqs) {
      const e = this.entries.get(seq);
      // An entry sent again since (after a reconnect) is not covered by this flush any more.
      if (e !== undefined && e.state === 'acked') {
        this.remove(seq);
        out.push(e.item);
      }
    }
    return out;
  }

  /** Whether any entry is waiting to be sent. */
  hasPending(): boolean {
    for (const e of this.entries.values()) if (e.state === 'pending') return true;
    return false;
  }

  /**
   * The next batch to send: pending entries in submission order, stopping before the first one
   * that overlaps an entry of the batch or an earlier entry still in flight.
   */
  nextBatch(limit = REPLAY_BATCH): LogEntry<T>[] {
    const batch: LogEntry<T>[] = [];
    const busy: LogEntry<T>[] = [];
    for (const e of this.entries.values()) {
      if (e.state === 'acked') continue;
      if (e.state === 'sent') {
        busy.push(e);
        continue;
      }
      if (busy.some((b) => overlap(b, e)) || batch.some((b) => overlap(b, e))) break;
      batch.push(e);
      if (batch.length >= limit) break;
    }
    return batch;
  }
}

const overlap = (a: { offset: number; length: number }, b: { offset: number; length: number }): boolean =>
  a.offset < b.offset + b.length && b.offset < a.offset + a.length;
