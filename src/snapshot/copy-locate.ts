/**
 * Where the snapshot read path (copy-read.ts, copy-batch.ts) reads a store slot: a descriptor of
 * its own on the slot's file (read-only, opened on first use, closed by `close`) and the byte
 * offset, without an object per lookup.
 *
 * The range of the slot found last is kept as slots [lo, hi) at `base + slot * chunkSize` of one
 * descriptor: `hi` is the range's end (`space.runEnd`), `lo` the lowest slot located in it so
 * far, so every slot in [lo, hi) is in that range (a range is one interval of slot numbers, and
 * a range whose slots were handed out never changes: `dropLast` takes back only a range none of
 * whose slots was ever available, hence never holding a copy). Anything else asks the space.
 */
import { closeSync, constants, openSync } from 'node:fs';
import { NbdsnapError } from '../errors.ts';
import type { StoreSpace } from '../store/space.ts';

export class SlotLocator {
  /** Set by `find`: the descriptor and the byte offset of the slot found. */
  fd = -1;
  position = 0;
  private readonly space: StoreSpace;
  private readonly chunkSize: number;
  private readonly fds = new Map<string, number>();
  private closed = false;
  private lo = 1;
  private hi = 0;
  private base = 0;
  private rangeFd = -1;

  constructor(space: StoreSpace, chunkSize: number) {
    this.space = space;
    this.chunkSize = chunkSize;
  }

  /**
   * Locate `slot` (`fd`, `position`): false for a slot on an NBD export (the store reads it).
   * Throws for a slot that does not exist, or once closed.
   */
  find(slot: number): boolean {
    if (this.closed) throw new NbdsnapError('ESHUTDOWN', 'the difference store is closed');
    if (slot < this.lo || slot >= this.hi) {
      const at = this.space.locate(slot);
      if (at.remote) return false;
      const fd = this.open(at.path);
      const base = at.offset - slot * this.chunkSize;
      const hi = this.space.runEnd(slot);
      if (hi === this.hi && base === this.base && fd === this.rangeFd) this.lo = Math.min(this.lo, slot);
      else {
        this.lo = slot;
        this.hi = hi;
        this.base = base;
        this.rangeFd = fd;
      }
    }
    this.fd = this.rangeFd;
    this.position = this.base + slot * this.chunkSize;
    return true;
  }

  /** The reader's descriptor on `path`. */
  open(path: string): number {
    if (this.closed) throw new NbdsnapError('ESHUTDOWN', 'the difference store is closed');
    let fd = this.fds.get(path);
    if (fd === undefined) {
      fd = openSync(path, constants.O_RDONLY);
      this.fds.set(path, fd);
    }
    return fd;
  }

  close(): void {
    this.closed = true;
    this.lo = 1;
    this.hi = 0;
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}
