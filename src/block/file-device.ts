/**
 * The file backend: a regular file or a block device, by positional I/O on one descriptor
 * shared by every connection (so FLUSH on any connection covers all of them: CAN_MULTI_CONN).
 *
 * - WRITE: the writes issued in one pass of the event loop go out together, as one native batch
 *   (fsx.c; adjacent buffers in one pwritev). A small batch is written on this thread (writeNow):
 *   into the page cache that takes microseconds, less than a hand-off to the thread pool and back
 *   (measured: the hand-offs were most of the CPU of 4 KiB writes). A slow one (the kernel
 *   throttling writers, a page to read first) sends the next batches to the thread pool for a
 *   while, and large batches always go there (writeBatch: one hand-off for the batch), so the
 *   event loop does not wait on the disk. Without the native helper, one fs.write each.
 * - FLUSH and FUA: fdatasync, batched (SyncBatcher) so concurrent FUA writes share syncs.
 * - TRIM punches holes (fallocate PUNCH_HOLE), so a sparse file stays sparse.
 * - WRITE_ZEROES punches too unless NO_HOLE asks for allocated zeroes (fallocate ZERO_RANGE);
 *   where the file system cannot, zero buffers are written (and FAST_ZERO answers ENOTSUP).
 * - base:allocation comes from the file's real allocation, by SEEK_DATA / SEEK_HOLE.
 * The fallocate/lseek calls need the native helper (native.ts); without it the device still
 * works, with the fallbacks named there.
 * The image is claimed for as long as it is open (ownership.ts): exclusively when writable,
 * shared when read-only, so a second server cannot write it under this one.
 */
import { close as closeCb, constants, fdatasync, fstat, open, read as readCb, write as writeCb } from 'node:fs';
import { promisify } from 'node:util';
import { NbdsnapError } from '../errors.ts';
import type { Extent } from '../nbd-protocol/index.ts';
import * as pool from './buffer-pool.ts';
import { type BlockDevice, DATA, type DeviceCapabilities, HOLE_ZERO, pushExtent, type ZeroOptions } from './device.ts';
import { native } from './native.ts';
import { type Claim, claimStorage } from './ownership.ts';
import { SyncBatcher } from './sync-batcher.ts';

const openAsync = promisify(open);
const fstatAsync = promisify(fstat);
const closeAsync = promisify(closeCb);
const fdatasyncAsync = promisify(fdatasync);

/** Largest read tried from the page cache without the thread pool. */
const NOWAIT_MAX = 128 * 1024;
/** A write batch is handed to the thread pool at once when it reaches this many bytes or writes. */
const BATCH_BYTES = 1024 * 1024;
const BATCH_WRITES = 64;
/** Batches up to this many bytes are written on the event loop's thread, while that is fast. */
const INLINE_MAX = 64 * 1024;
/** An inline batch slower than this sends batches to the thread pool for INLINE_BACKOFF_MS. */
const INLINE_SLOW_NS = 2_000_000n;
const INLINE_BACKOFF_MS = 2000;
/** Largest zero buffer written at once by the WRITE_ZEROES fallback. */
const ZERO_STEP = 1024 * 1024;
let zeroBuffer: Buffer | undefined;

interface QueuedWrite {
  data: Buffer;
  offset: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export interface FileDeviceOptions {
  readOnly?: boolean;
}

export class FileDevice implements BlockDevice {
  readonly size: number;
  readonly capabilities: DeviceCapabilities;
  readonly path: string;
  private readonly fd: number;
  private readonly syncer: SyncBatcher;
  private closed = false;
  private claim: Claim | undefined;
  /** SEEK_DATA works on this file (not on every block device or file system). */
  private seekable: boolean;
  /** Writes waiting for the end of this pass of the event loop, to go as one batch. */
  private queued: QueuedWrite[] = [];
  private queuedBytes = 0;
  private submitScheduled = false;
  /** Until this time (ms), batches go to the thread pool even when small. */
  private inlineAfter = 0;
  private readonly submitBound = () => {
    this.submitScheduled = false;
    this.submitWrites();
  };

  private constructor(path: string, fd: number, size: number, readOnly: boolean, regular: boolean) {
    this.path = path;
    this.fd = fd;
    this.size = size;
    this.seekable = native !== undefined && regular;
    this.capabilities = {
      writable: !readOnly,
      durable: true,
      trim: native !== undefined,
      fastZero: native !== undefined,
      multiConn: true,
    };
    this.syncer = new SyncBatcher(() => fdatasyncAsync(this.fd));
  }

  static async open(path: string, options: FileDeviceOptions = {}): Promise<FileDevice> {
    const readOnly = options.readOnly ?? false;
    let fd: number;
    try {
      fd = await openAsync(path, readOnly ? constants.O_RDONLY : constants.O_RDWR);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // EISDIR: a directory given as image (read-write open); one clear line, not Node's text.
      const reasons: Record<string, string> = {
        ENOENT: 'no such file',
        EACCES: 'permission denied',
        EISDIR: 'it is a directory',
        EPERM: 'operation not permitted (EPERM)',
        EROFS: 'read-only file system (EROFS)',
      };
      const why = reasons[code ?? ''] ?? String(err);
      throw new NbdsnapError('BAD_ARGUMENT', `cannot open ${path}: ${why}`, { cause: err });
    }
    const st = await fstatAsync(fd);
    if (!st.isFile() && !st.isBlockDevice()) {
      await closeAsync(fd);
      throw new NbdsnapError('BAD_ARGUMENT', `${path} is neither a regular file nor a block device`);
    }
    const size = st.isFile() ? st.size : (native?.sizeOf(fd) ?? st.size);
    let claim: Claim;
    try {
      claim = claimStorage(path, { exclusive: !readOnly, role: 'image', expect: { dev: st.dev, ino: st.ino } });
    } catch (err) {
      await closeAsync(fd);
      throw err;
    }
    const device = new FileDevice(path, fd, size, readOnly, st.isFile());
    device.claim = claim;
    return device;
  }

  read(offset: number, length: number): Promise<Buffer> {
    const buf = pool.take(length);
    // Small reads of cached data are served on this thread: a thread-pool round trip costs more
    // than the copy (about 17 us per call, measured). Uncached data takes the thread pool.
    if (length <= NOWAIT_MAX && native?.readNowait !== undefined) {
      const n = native.readNowait(this.fd, buf, offset);
      if (n === length) return Promise.resolve(buf);
    }
    return this.readInto(buf, offset).then(() => buf);
  }

  /** Fill `buf` from `offset`, looping over short reads; zero-fills past the end of file. */
  readInto(buf: Buffer, offset: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let done = 0;
      const step = (): void => {
        readCb(this.fd, buf, done, buf.length - done, offset + done, (err, n) => {
          if (err) return reject(err);
          done += n;
          if (n === 0 && done < buf.length) {
            buf.fill(0, done);
            done = buf.length;
          }
          if (done < buf.length) step();
          else resolve();
        });
      };
      step();
    });
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const written =
      native?.writeBatch !== undefined && data.length > 0 ? this.queueWrite(data, offset) : this.writeAll(data, offset);
    return fua ? written.then(() => this.flush()) : written;
  }

  private queueWrite(data: Buffer, offset: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queued.push({ data, offset, resolve, reject });
      this.queuedBytes += data.length;
      if (this.queuedBytes >= BATCH_BYTES || this.queued.length >= BATCH_WRITES) this.submitWrites();
      else if (!this.submitScheduled) {
        this.submitScheduled = true;
        setImmediate(this.submitBound);
      }
    });
  }

  /** Hand the queued writes to the thread pool as one batch. */
  private submitWrites(): void {
    const batch = this.queued;
    const writeBatch = native?.writeBatch;
    if (batch.length === 0 || writeBatch === undefined) return;
    this.queued = [];
    const bytes = this.queuedBytes;
    this.queuedBytes = 0;
    const buffers = batch.map((w) => w.data);
    const offsets = batch.map((w) => w.offset);
    const settle = (errors: (Error | undefined)[]) => {
      for (let i = 0; i < batch.length; i++) {
        const w = batch[i] as QueuedWrite;
        const err = errors[i];
        if (err === undefined) w.resolve();
        else w.reject(err);
      }
    };
    try {
      const writeNow = native?.writeNow;
      if (writeNow !== undefined && bytes <= INLINE_MAX && Date.now() >= this.inlineAfter) {
        const t0 = process.hrtime.bigint();
        const errors = writeNow(this.fd, buffers, offsets);
        if (process.hrtime.bigint() - t0 > INLINE_SLOW_NS) this.inlineAfter = Date.now() + INLINE_BACKOFF_MS;
        settle(errors);
      } else {
        writeBatch(this.fd, buffers, offsets, settle);
      }
    } catch (err) {
      for (const w of batch) w.reject(err as Error);
    }
  }

  private writeAll(data: Buffer, offset: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let done = 0;
      const step = (): void => {
        writeCb(this.fd, data, done, data.length - done, offset + done, (err, n) => {
          if (err) return reject(err);
          done += n;
          if (done < data.length) step();
          else resolve();
        });
      };
      step();
    });
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    if (this.tryFallocate(options.mayTrim ? 'punch' : 'zero', offset, length)) {
      // punched or zeroed in place
    } else if (options.mayTrim && this.tryFallocate('zero', offset, length)) {
      // the file system cannot punch but can zero a range
    } else if (options.fast) {
      throw new NbdsnapError('ENOTSUP', 'cannot zero this range faster than writing zeroes');
    } else {
      await this.writeZeroBuffers(offset, length);
    }
    if (options.fua) await this.flush();
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    // TRIM is a hint: where the file system cannot punch holes, nothing is discarded.
    if (this.tryFallocate('punch', offset, length) && fua) await this.flush();
  }

  private tryFallocate(mode: 'punch' | 'zero', offset: number, length: number): boolean {
    if (native === undefined) return false;
    try {
      if (mode === 'punch') native.punchHole(this.fd, offset, length);
      else native.zeroRange(this.fd, offset, length);
      return true;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'EOPNOTSUPP' || code === 'EINVAL' || code === 'ENODEV') return false;
      throw err;
    }
  }

  private async writeZeroBuffers(offset: number, length: number): Promise<void> {
    zeroBuffer ??= Buffer.alloc(ZERO_STEP);
    for (let done = 0; done < length; ) {
      const n = Math.min(ZERO_STEP, length - done);
      await this.writeAll(zeroBuffer.subarray(0, n), offset + done);
      done += n;
    }
  }

  flush(): Promise<void> {
    return this.syncer.sync();
  }

  async cache(): Promise<void> {
    // The page cache already serves this; nothing to prefetch.
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const end = Math.min(this.size, offset + length);
    if (!this.seekable || native === undefined) return [{ length: end - offset, flags: DATA }];
    const out: Extent[] = [];
    try {
      let pos = offset;
      while (pos < end && out.length < 65536) {
        let data = native.seekData(this.fd, pos);
        if (data < 0 || data > end) data = end;
        if (data > pos) {
          pushExtent(out, data - pos, HOLE_ZERO);
          pos = data;
          if (pos >= end) break;
        }
        let hole = native.seekHole(this.fd, pos);
        if (hole < 0 || hole > end) hole = end;
        pushExtent(out, Math.max(hole - pos, 1), DATA);
        pos = Math.max(hole, pos + 1);
      }
    } catch {
      this.seekable = false; // this file system does not support SEEK_DATA: report data
      return [{ length: end - offset, flags: DATA }];
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await closeAsync(this.fd);
    this.claim?.release();
  }
}
