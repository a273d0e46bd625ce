/**
 * The store's allocation map: one byte per slot (used or free), slots numbered across the ranges
 * in order, each range a segment of the map (a run never crosses one). Allocation is next fit
 * from a cursor, so copies made one after another take consecutive slots while the free space
 * is contiguous; `allocateRun(n)` takes n consecutive slots of one range at once (the chunks of
 * one request), next fit too, searching a bounded distance: neighbouring chunks copied together
 * sit in neighbouring slots, written with one `pwritev` and read back with one read.
 */
import { NbdsnapError } from '../errors.ts';

/** How far past the cursor `allocateRun` looks for a run, in slots per slot wanted. */
const RUN_SEARCH_FACTOR = 1024;

export class SlotMap {
  private used = new Uint8Array(0);
  private freeSlots = 0;
  private cursor = 0;
  /** The first slot of each range, in order. */
  private readonly starts: number[] = [];

  get total(): number {
    return this.used.length;
  }

  get free(): number {
    return this.freeSlots;
  }

  /** Add a range of `slots` slots at the end; with `available` false they stay used. */
  grow(slots: number, available: boolean): void {
    const first = this.used.length;
    const grown = new Uint8Array(first + slots);
    grown.set(this.used);
    if (available) this.freeSlots += slots;
    else grown.fill(1, first);
    this.used = grown;
    this.starts.push(first);
  }

  /** Take back the range added last (its slots must be used: never made available). */
  shrink(): void {
    const first = this.starts.pop();
    if (first !== undefined) this.used = this.used.slice(0, first);
  }

  allocate(): number | undefined {
    if (this.freeSlots === 0) return undefined;
    const n = this.used.length;
    for (let i = 0; i < n; i++) {
      const slot = (this.cursor + i) % n;
      if (this.used[slot] === 0) {
        this.used[slot] = 1;
        this.freeSlots -= 1;
        this.cursor = (slot + 1) % n;
        return slot;
      }
    }
    return undefined;
  }

  /**
   * `count` free slots, consecutive in one range when such a run lies within a bounded distance
   * past the cursor, else one by one (`allocate()`); fewer when fewer are free.
   */
  allocateRun(count: number): number[] {
    const want = Math.min(count, this.freeSlots);
    if (want <= 1) {
      const one = want === 1 ? this.allocate() : undefined;
      return one === undefined ? [] : [one];
    }
    const first = this.findRun(want);
    if (first === undefined) {
      const out: number[] = [];
      for (let i = 0; i < want; i++) out.push(this.allocate() as number);
      return out;
    }
    this.used.fill(1, first, first + want);
    this.freeSlots -= want;
    this.cursor = (first + want) % this.used.length;
    return Array.from({ length: want }, (_, i) => first + i);
  }

  /** The first slot of `count` free consecutive slots in one range, searching from the cursor. */
  private findRun(count: number): number | undefined {
    const n = this.used.length;
    const limit = Math.min(n, count * RUN_SEARCH_FACTOR);
    const starts = new Set(this.starts);
    let start = this.cursor;
    let run = 0;
    for (let i = 0; i < limit; i++) {
      const slot = (this.cursor + i) % n;
      if (starts.has(slot)) run = 0;
      if (this.used[slot] !== 0) {
        run = 0;
        continue;
      }
      if (run === 0) start = slot;
      run += 1;
      if (run === count) return start;
    }
    return undefined;
  }

  isUsed(slot: number): boolean {
    return this.used[slot] === 1;
  }

  /** Mark a slot used (replay). */
  claim(slot: number): void {
    if (slot >= this.used.length)
      throw new NbdsnapError('CORRUPT', `store slot ${slot} is beyond the store (${this.used.length})`);
    if (this.used[slot] === 0) {
      this.used[slot] = 1;
      this.freeSlots -= 1;
    }
  }

  release(slot: number): void {
    if (this.used[slot] === 1) {
      this.used[slot] = 0;
      this.freeSlots += 1;
    }
  }

  /** Reset (before a replay). */
  clear(): void {
    this.used.fill(0);
    this.freeSlots = this.used.length;
    this.cursor = 0;
  }
}
