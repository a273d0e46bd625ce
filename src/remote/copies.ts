/**
 * The buffers of the replay log's copies of write payloads, kept from one flush to the next
 * writes: the copies a flush releases are taken again by the next writes of the same length
 * instead of going back to the process's buffer pool (whose idle limit is lower than a log's
 * budget, so most of each released batch became garbage, and every fresh buffer cost page faults
 * when first copied into). Held idle: at most what the log leaves of its budget, so the log and
 * its spare buffers together stay within `replayBudget`.
 */
import * as pool from '../block/buffer-pool.ts';

export class Copies {
  private readonly byLength = new Map<number, Buffer[]>();
  private idle = 0;

  /** Idle bytes held. */
  get bytes(): number {
    return this.idle;
  }

  /** A buffer of `length` bytes (old contents) for a copy. */
  take(length: number): Buffer {
    const reused = this.byLength.get(length)?.pop();
    if (reused === undefined) return pool.take(length);
    this.idle -= length;
    return reused;
  }

  /** A copy no longer needed; kept if `room` bytes allow, else back to the pool. */
  give(b: Buffer | undefined, room: number): void {
    if (b === undefined) return;
    if (this.idle + b.length > room) {
      pool.give(b);
      return;
    }
    const list = this.byLength.get(b.length);
    if (list === undefined) this.byLength.set(b.length, [b]);
    else list.push(b);
    this.idle += b.length;
  }

  /** Everything back to the pool (the session closes or fails). */
  clear(): void {
    for (const list of this.byLength.values()) for (const b of list) pool.give(b);
    this.byLength.clear();
    this.idle = 0;
  }
}
