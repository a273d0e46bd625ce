/**
 * Loads the optional native helper (src/native/fsx.c, built by `npm install`): lseek with
 * SEEK_DATA / SEEK_HOLE / SEEK_END, fallocate hole punching, open file description locks and the
 * loop-device status, which Node does not expose, and batched writes on the thread pool.
 * Without it, `native` is undefined and callers fall back: block status reports all data, TRIM
 * is skipped (it is a hint), WRITE_ZEROES writes zero buffers and FAST_ZERO answers ENOTSUP;
 * images and store ranges are not locked (ownership.ts says so in a warning) and loop devices are
 * identified through sysfs. CRC-32 (src/native/crc32.c) falls back to zlib's (src/store/checksum.ts).
 */
import { createRequire } from 'node:module';

export interface NativeFs {
  /** Next data offset at or after `offset`, or -1 if there is no data there or beyond. */
  seekData(fd: number, offset: number): number;
  /** Next hole at or after `offset` (the end of file counts as a hole), or -1 past the end. */
  seekHole(fd: number, offset: number): number;
  sizeOf(fd: number): number;
  /** preadv2(RWF_NOWAIT): bytes read from the page cache, or -1 if that would block. */
  readNowait(fd: number, buffer: Buffer, offset: number): number;
  punchHole(fd: number, offset: number, length: number): void;
  zeroRange(fd: number, offset: number, length: number): void;
  /**
   * fcntl(F_OFD_SETLK): a write lock (exclusive) or read lock (shared) on [start, start + length)
   * of the open file description, length 0 meaning to the end and beyond. Returns 0 or the errno
   * (EAGAIN or EACCES when another open file description holds a conflicting lock).
   */
  ofdLock(fd: number, exclusive: boolean, start?: number, length?: number): number;
  /** LOOP_GET_STATUS64 of a loop device, or null when `fd` is not a bound loop device. */
  loopInfo(fd: number): LoopInfo | null;
  /**
   * Write each buffer at its offset, in order, on one thread of libuv's pool; `done` gets one
   * entry per buffer: undefined when written, else an Error with the errno name as `code`.
   * Absent from a helper built before it existed.
   */
  writeBatch?(fd: number, buffers: Buffer[], offsets: number[], done: (errors: (Error | undefined)[]) => void): void;
  /** The same writes on the calling thread; returns what `writeBatch` passes to `done`. */
  writeNow?(fd: number, buffers: Buffer[], offsets: number[]): (Error | undefined)[];
  /** zlib's crc32 of the bytes (src/native/crc32.c), `seed` continuing a previous one. */
  crc32?(bytes: Uint8Array, seed?: number): number;
  /** The CRC-32 of `bytes`, and out[k] that of its k-th `block`-sized piece (the last may be shorter). */
  crc32Blocks?(bytes: Uint8Array, block: number, out: Uint32Array): number;
  /** Test hook: 0 tables, 1 PCLMULQDQ, 2 VPCLMULQDQ (capped at the CPU's); returns the level in use. */
  crc32Use?(level: number): number;
  /**
   * On one thread of the pool (src/native/read-crc.c): fill each buffer from its fd at its
   * position, crcs[i] its CRC-32, sums[i * blocks + k] that of its k-th 4 KiB block (blocks =
   * sums.length / buffers.length); then done(errors), errors[i] 0 or the errno (EIO: short).
   */
  readCrcBatch?(
    fds: number[],
    buffers: Buffer[],
    positions: number[],
    crcs: Uint32Array,
    sums: Uint32Array,
    done: (errors: number[]) => void,
  ): void;
  /** The address of the buffer's first byte modulo 4096 (read-crc.c). Absent from a helper built before it existed. */
  pageOffset?(buffer: Uint8Array): number;
  /**
   * commit.c: on one pool thread, the first `dataCount` buffers, then the rest, each at its
   * offset; the first failed write stops the job (later entries ECANCELED, no sync); then
   * fdatasync of each of `syncFds`. Absent from a helper built before it existed.
   */
  writeAndSync?(
    fd: number,
    buffers: Buffer[],
    offsets: number[],
    dataCount: number,
    syncFds: number[],
    done: (errors: (Error | undefined)[], syncError: Error | undefined) => void,
  ): void;
}

export interface LoopInfo {
  /** The backing file's file system (major, minor) and inode. */
  major: number;
  minor: number;
  inode: number;
  offset: number;
  /** 0: up to the end of the backing file. */
  sizeLimit: number;
  /** The backing file's name as given to the kernel (at most 63 bytes). */
  fileName: string;
}

function load(): NativeFs | undefined {
  const require = createRequire(import.meta.url);
  // From src/block/ (running the sources) or from dist/ (running the bundle).
  for (const path of ['../../build/Release/fsx.node', '../build/Release/fsx.node']) {
    try {
      return require(path) as NativeFs;
    } catch {
      // try the next place
    }
  }
  return undefined;
}

export const native: NativeFs | undefined = load();
