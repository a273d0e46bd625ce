/**
 * Loads the optional native helper (src/native/fsx.c, built by `npm install`): lseek with
 * SEEK_DATA / SEEK_HOLE / SEEK_END and fallocate hole punching, which Node does not expose.
 * Without it, `native` is undefined and callers fall back: block status reports all data, TRIM
 * is skipped (it is a hint), WRITE_ZEROES writes zero buffers and FAST_ZERO answers ENOTSUP.
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
