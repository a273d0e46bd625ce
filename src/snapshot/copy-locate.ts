/**
 * Where the snapshot read path (copy-read.ts, copy-batch.ts) reads a store slot: a descriptor of
 * its own on the slot's file (read-only, opened on first use, closed by `close`) and the byte
 * offset, without an object per lookup; and the reads of a slot, from the page cache on this
 * thread (`readNow`) or through the thread pool (`readLater`), false on any error (the caller's
 * slow path reads again through the store, and reports).
 *
 * The range of the slot found last is kept as slots [lo, hi) at `base + slot * chunkSize` of one
 * descriptor: `hi` is the range's end (`space.runEnd`), `lo` the lowest slot located in it so
 * far, so every slot in [lo, hi) is in that range (a range is one interval of slot numbers, and
 * a range whose slots were handed out never changes: `dropLast` takes back only a range none of
 * whose slots was ever available, hence never holding a copy). Anything else asks the space.
 */
import { closeSync, constants, openSync, read } from 'node:fs';
import { native } from '../block/native.ts';
import { NbdsnapError } from '../errors.ts';
import type { StoreSpace } from '../store/space.ts';

/** Reads served on this thread from the page cache up to this size (as FileDevice does). */
export const NOWAIT_MAX = 1024 * 1024;
const readNowait = native?.readNowait;

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

  /** Fill `buf` from `slot` at `inSlot` (it may run on into the following slots) from the page cache, on this thread. */
  readNow(slot: number, inSlot: number, buf: Buffer): boolean {
    if (buf.length > NOWAIT_MAX || readNowait === undefined) return false;
    try {
      // false: a range on an NBD export (the store reads it)
      return this.find(slot) && readNowait(this.fd, buf, this.position + inSlot) === buf.length;
    } catch {
      return false;
    }
  }

  /** `readNow` through the thread pool. */
  async readLater(slot: number, inSlot: number, buf: Buffer): Promise<boolean> {
    try {
      if (!this.find(slot)) return false; // a range on an NBD export: the store reads it
      const fd = this.fd;
      const position = this.position + inSlot;
      for (let done = 0; done < buf.length; ) {
        const n = await new Promise<number>((resolve, reject) =>
          read(fd, buf, done, buf.length - done, position + done, (err, bytes) => (err ? reject(err) : resolve(bytes))),
        );
        if (n === 0) return false;
        done += n;
      }
      return true;
    } catch {
      return false;
    }
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
