/**
 * The difference store's space: an ordered list of ranges (a file or block device, a start and a
 * length in bytes), cut into chunk-sized slots. Slot numbers run across all ranges in order; a
 * slot never crosses a range, and a range's tail shorter than a chunk is not used (blksnap does
 * the same). The first `reserved` bytes of every range hold its label (label.ts).
 *
 * Allocation (slot-map.ts) is next fit, in runs of consecutive slots for the chunks of one
 * request; `release()` makes a slot reusable. A run of slots is written with one `pwritev`
 * (`writeRun`, slot-writer.ts). I/O goes to one descriptor per distinct file, shared by all
 * ranges on it; `sync()` fdatasyncs them all.
 */
import {
  closeSync,
  constants,
  fdatasync,
  fstatSync,
  openSync,
  realpathSync,
  writeSync,
  writev,
} from 'node:fs';
import { promisify } from 'node:util';
import type { BlockDevice } from '../block/device.ts';
import { native } from '../block/native.ts';
import { type Claim, claimStorage } from '../block/ownership.ts';
import { NbdsnapError } from '../errors.ts';
import { releaseRemote, remoteSize, takeRemote } from '../remote/remote-ranges.ts';
import { isRemote } from '../remote/uri.ts';
import { readFully, writeFully } from './positional-io.ts';
import { SlotMap } from './slot-map.ts';

const fdatasyncAsync = promisify(fdatasync);
const writevAsync = promisify(writev);

export interface StoreRange {
  path: string;
  /** Byte offset of the range in its file. */
  start: number;
  /** Length in bytes. */
  length: number;
}

interface OpenRange extends StoreRange {
  fd: number;
  /** A range on a remote NBD export (fd is -1). */
  remote?: BlockDevice | undefined;
  firstSlot: number;
  slots: number;
  /** Byte offset of slot `firstSlot` in the file. */
  slotBase: number;
}

interface OpenFile {
  fd: number;
  remote?: BlockDevice | undefined;
  dev: number;
  ino: number;
  size: number;
}

/** "PATH" or "PATH:START+COUNT" in 512-byte sectors. COUNT may be omitted to mean "to the end". */
export function parseRangeSpec(spec: string): { path: string; startSector?: number; sectors?: number } {
  const m = /^(.*):(\d+)\+(\d*)$/.exec(spec);
  if (m === null) return { path: spec };
  const out: { path: string; startSector?: number; sectors?: number } = {
    path: m[1] as string,
    startSector: Number(m[2]),
  };
  if (m[3] !== '') out.sectors = Number(m[3]);
  return out;
}

export class StoreSpace {
  readonly chunkSize: number;
  readonly reserved: number;
  private readonly files = new Map<string, OpenFile>();
  /** The claims on every range opened (ownership.ts), released on close. */
  private readonly claims: Claim[] = [];
  private readonly ranges: OpenRange[] = [];
  private readonly map = new SlotMap();

  private readonly readOnly: boolean;

  /** `readOnly`: files are opened for reading only, under a shared claim (store check). */
  constructor(chunkSize: number, reserved: number, readOnly = false) {
    this.chunkSize = chunkSize;
    this.reserved = reserved;
    this.readOnly = readOnly;
  }

  get totalSlots(): number {
    return this.map.total;
  }
  get free(): number {
    return this.map.free;
  }
  get rangeList(): StoreRange[] {
    return this.ranges.map(({ path, start, length }) => ({ path, start, length }));
  }

  /** Resolve a range spec against its file (COUNT defaults to the rest of the file). */
  static resolve(spec: string): StoreRange {
    const { path, startSector = 0, sectors } = parseRangeSpec(spec);
    if (isRemote(path)) return fitRange(spec, path, remoteSize(path), startSector, sectors);
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY);
    } catch (err) {
      throw new NbdsnapError('BAD_ARGUMENT', `store ${path}: ${(err as Error).message}`);
    }
    const st = fstatSync(fd);
    const size = st.isBlockDevice() ? (native?.sizeOf(fd) ?? 0) : st.size;
    closeSync(fd);
    return fitRange(spec, realpathSync(path), size, startSector, sectors);
  }

  /**
   * Open and add a range; refuses overlaps with ranges already added. Returns its slot count.
   * With `available` false its slots stay in use until `makeAvailable()` (an append not yet
   * recorded in range 0's label), or the range is taken back with `dropLast()`.
   */
  add(range: StoreRange, available = true): number {
    const file = this.openFile(range);
    for (const r of this.ranges) {
      const other = this.files.get(r.path) as OpenFile;
      const sameFile = other.dev === file.dev && other.ino === file.ino;
      if (sameFile && range.start < r.start + r.length && r.start < range.start + range.length) {
        throw new NbdsnapError('BAD_ARGUMENT', `store range ${describe(range)} overlaps ${describe(r)}`);
      }
    }
    if (range.start + range.length > file.size) {
      throw new NbdsnapError('BAD_ARGUMENT', `store range ${describe(range)} is past the end of ${range.path}`);
    }
    const skip = this.reserved;
    const usable = range.length - skip;
    const least = this.ranges.length === 0 ? 4 : 1;
    if (usable < this.chunkSize * least) {
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        this.ranges.length === 0
          ? `the first store range must hold at least ${skip + this.chunkSize * least} bytes`
          : `store range ${describe(range)} is smaller than one chunk after its ${skip / 1024} KiB label area`,
      );
    }
    const slots = Math.floor(usable / this.chunkSize);
    const firstSlot = this.map.total;
    this.ranges.push({ ...range, fd: file.fd, remote: file.remote, firstSlot, slots, slotBase: range.start + skip });
    this.map.grow(slots, available);
    return slots;
  }

  /** Take back the range added last, whose slots were never made available (a failed append). */
  dropLast(): void {
    if (this.ranges.pop() !== undefined) this.map.shrink();
  }

  /** Let slots [first, first + count) be allocated (see `add`). */
  makeAvailable(first: number, count: number): void {
    for (let slot = first; slot < first + count; slot++) this.release(slot);
  }

  /** Whether a byte range of a file lies in any store range (to refuse origins that overlap). */
  overlaps(dev: number, ino: number, start: number, length: number): StoreRange | undefined {
    return this.ranges.find((r) => {
      const f = this.files.get(r.path) as OpenFile;
      return f.dev === dev && f.ino === ino && start < r.start + r.length && r.start < start + length;
    });
  }

  allocate(): number | undefined {
    return this.map.allocate();
  }

  /** `count` free slots, consecutive in one range where possible (slot-map.ts). */
  allocateRun(count: number): number[] {
    return this.map.allocateRun(count);
  }

  /** The first slot after the range that holds `slot` (a run never crosses it). */
  runEnd(slot: number): number {
    for (const r of this.ranges) if (slot >= r.firstSlot && slot < r.firstSlot + r.slots) return r.firstSlot + r.slots;
    throw new NbdsnapError('EIO', `store slot ${slot} does not exist`);
  }

  /** Whether `slot` is allocated. */
  isUsed(slot: number): boolean {
    return this.map.isUsed(slot);
  }

  /** Mark a slot used (replay). */
  claim(slot: number): void {
    this.map.claim(slot);
  }

  release(slot: number): void {
    this.map.release(slot);
  }

  /** Reset the allocation map (before a replay). */
  clearAllocations(): void {
    this.map.clear();
  }

  private where(slot: number): { fd: number; offset: number; remote?: BlockDevice | undefined } {
    for (const r of this.ranges) {
      if (slot >= r.firstSlot && slot < r.firstSlot + r.slots) {
        return { fd: r.fd, remote: r.remote, offset: r.slotBase + (slot - r.firstSlot) * this.chunkSize };
      }
    }
    throw new NbdsnapError('EIO', `store slot ${slot} does not exist`);
  }

  /** Where a slot lies: its file and byte offset (reports of damage). */
  locate(slot: number): { path: string; offset: number; remote: boolean } {
    const r = this.ranges.find((x) => slot >= x.firstSlot && slot < x.firstSlot + x.slots);
    if (r === undefined) throw new NbdsnapError('EIO', `store slot ${slot} does not exist`);
    return { path: r.path, offset: r.slotBase + (slot - r.firstSlot) * this.chunkSize, remote: r.remote !== undefined };
  }

  async writeSlot(slot: number, data: Buffer, offsetInSlot = 0): Promise<void> {
    const { fd, offset, remote } = this.where(slot);
    if (remote !== undefined) await remote.write(offset + offsetInSlot, data, false);
    else await writeFully(fd, data, offset + offsetInSlot);
  }

  /**
   * The same as `writeSlot`, on this thread: for the journal's few hundred bytes a batch, into the
   * page cache, where a thread-pool round trip (a wake-up and a context switch each way) costs
   * more than the write, and lies on the path every waiting write takes.
   */
  writeSlotSync(slot: number, data: Buffer, offsetInSlot = 0): Promise<void> | undefined {
    const { fd, offset, remote } = this.where(slot);
    // a range on an NBD export cannot be written on this thread: the caller awaits the promise
    if (remote !== undefined) return remote.write(offset + offsetInSlot, data, false);
    for (let done = 0; done < data.length; )
      done += writeSync(fd, data, done, data.length - done, offset + offsetInSlot + done);
    return undefined;
  }

  /** Write whole slots `first`, `first + 1`, ... (one range) from `buffers`, one chunk each, with one `pwritev`. */
  async writeRun(first: number, buffers: Buffer[]): Promise<void> {
    const { fd, offset, remote } = this.where(first);
    if (first + buffers.length > this.runEnd(first)) throw new NbdsnapError('EINVAL', 'a run of slots crosses a range');
    if (buffers.some((b) => b.length !== this.chunkSize)) throw new NbdsnapError('EINVAL', 'a run of partial slots');
    if (remote !== undefined) return remote.write(offset, Buffer.concat(buffers), false);
    let bufs = buffers;
    let position = offset;
    for (;;) {
      const { bytesWritten } = await writevAsync(fd, bufs, position);
      const total = bufs.reduce((n, b) => n + b.length, 0);
      if (bytesWritten >= total) return;
      // A short write: go on from where it stopped.
      position += bytesWritten;
      let skip = bytesWritten;
      const rest: Buffer[] = [];
      for (const b of bufs) {
        if (skip >= b.length) skip -= b.length;
        else {
          rest.push(skip > 0 ? b.subarray(skip) : b);
          skip = 0;
        }
      }
      bufs = rest;
    }
  }

  /**
   * Where copies and journal bytes in `slots` can go out with their sync in one hand-off
   * (`native.writeAndSync`): the descriptor they all share, and every descriptor of the store
   * (what `sync()` syncs). Undefined when they cannot: no native helper, slots on several files,
   * or a range on an NBD export.
   */
  commitTarget(slots: readonly number[]): { fd: number; syncFds: number[] } | undefined {
    if (native?.writeAndSync === undefined) return undefined;
    let fd = -1;
    for (const slot of slots) {
      const r = this.ranges.find((x) => slot >= x.firstSlot && slot < x.firstSlot + x.slots);
      if (r === undefined || r.remote !== undefined || (fd !== -1 && r.fd !== fd)) return undefined;
      fd = r.fd;
    }
    const syncFds: number[] = [];
    for (const f of this.files.values()) {
      if (f.remote !== undefined) return undefined;
      syncFds.push(f.fd);
    }
    return fd === -1 ? undefined : { fd, syncFds };
  }

  /** The byte offset of `slot` in its file. */
  slotOffset(slot: number): number {
    return this.where(slot).offset;
  }

  async readSlot(slot: number, length: number, offsetInSlot = 0): Promise<Buffer> {
    const { fd, offset, remote } = this.where(slot);
    if (remote !== undefined) return remote.read(offset + offsetInSlot, length);
    return readFully(fd, length, offset + offsetInSlot);
  }

  /** Raw I/O in the reserved label area of range `index`. */
  async writeLabel(index: number, data: Buffer, offset: number): Promise<void> {
    if (offset + data.length > this.reserved) throw new NbdsnapError('EINVAL', 'write past the label area');
    const r = this.range(index);
    if (r.remote !== undefined) await r.remote.write(r.start + offset, data, false);
    else await writeFully(r.fd, data, r.start + offset);
  }

  async readLabel(index: number, length: number, offset: number): Promise<Buffer> {
    const r = this.range(index);
    if (r.remote !== undefined) return r.remote.read(r.start + offset, length);
    return readFully(r.fd, length, r.start + offset);
  }

  private range(index: number): OpenRange {
    const r = this.ranges[index];
    if (r === undefined) throw new NbdsnapError('EINVAL', `store range ${index} is not open`);
    return r;
  }

  async sync(): Promise<void> {
    await Promise.all([...this.files.values()].map((f) => (f.remote ? f.remote.flush() : fdatasyncAsync(f.fd))));
  }

  close(): void {
    for (const [path, f] of this.files) {
      if (f.remote === undefined) closeSync(f.fd);
      else void releaseRemote(path);
    }
    this.files.clear();
    for (const c of this.claims.splice(0)) c.release();
  }

  /**
   * The range's file, opened once; each range is claimed for the store's lifetime: exclusively,
   * or shared when read-only (a check runs beside other readers, never beside a server).
   */
  private openFile(range: StoreRange): OpenFile {
    const { path } = range;
    if (isRemote(path)) return this.openRemote(path);
    const known = this.files.get(path);
    const opened = known === undefined;
    const fd = known?.fd ?? openSync(path, this.readOnly ? constants.O_RDONLY : constants.O_RDWR);
    try {
      const st = fstatSync(fd);
      const claim = {
        exclusive: !this.readOnly,
        role: this.readOnly ? 'store check' : 'store',
        start: range.start,
        length: range.length,
      };
      this.claims.push(claimStorage(path, { ...claim, expect: { dev: st.dev, ino: st.ino } }));
      if (known !== undefined) return known;
      const size = st.isBlockDevice() ? (native?.sizeOf(fd) ?? 0) : st.size;
      const file = { fd, dev: st.dev, ino: st.ino, size };
      this.files.set(path, file);
      return file;
    } catch (err) {
      if (opened) closeSync(fd);
      throw err;
    }
  }

  /** A range on a remote export (connected before, remote-ranges.ts): nothing can be locked there. */
  private openRemote(path: string): OpenFile {
    const known = this.files.get(path);
    if (known !== undefined) return known;
    const { device, id } = takeRemote(path);
    const file = { fd: -1, dev: -1, ino: id, size: device.size, remote: device };
    this.files.set(path, file);
    return file;
  }
}

/** A range spec's extent in a file or export of `size` bytes, checked. */
function fitRange(spec: string, path: string, size: number, startSector: number, sectors?: number): StoreRange {
  const start = startSector * 512;
  const length = sectors === undefined ? size - start : sectors * 512;
  if (length <= 0 || start + length > size) {
    throw new NbdsnapError('BAD_ARGUMENT', `store range ${spec} does not fit in ${path} (${size} bytes)`);
  }
  return { path, start, length };
}

const describe = (r: StoreRange): string => `${r.path}:${r.start / 512}+${r.length / 512}`;
