/**
 * Large snapshot reads of whole copies (copy-read.ts): when one request reads more than
 * BATCH_MIN bytes of whole chunks, they are read and hashed on one thread of libuv's pool
 * (`readCrcBatch`, src/native/read-crc.c: neighbouring slots joined into one preadv, each chunk's
 * CRC and its 4 KiB block CRCs computed there) and only compared here with the recorded
 * checksums. A piece that does not check out goes to `failed`, for the caller's slow path.
 */
import * as pool from '../block/buffer-pool.ts';
import { type NativeFs, native } from '../block/native.ts';
import type { CopyCache, Token } from './copy-cache.ts';
import type { SlotLocator } from './copy-locate.ts';
import type { CopyPiece } from './copy-read.ts';

/** Whole chunks of one request beyond this many bytes are read and hashed on the pool, in one batch. */
const BATCH_MIN = 128 * 1024;
const readCrcBatch = native?.readCrcBatch;

/** The descriptors and positions of `whole`'s copies when they are many enough bytes to read on the pool. */
export function batchable(
  whole: readonly CopyPiece[],
  at: SlotLocator,
): { fds: number[]; positions: number[] } | undefined {
  if (whole.length < 2 || readCrcBatch === undefined) return undefined;
  let bytes = 0;
  for (const p of whole) bytes += p.chunkLength;
  if (bytes <= BATCH_MIN) return undefined;
  const fds: number[] = [];
  const positions: number[] = [];
  try {
    for (const p of whole) {
      if (!at.find(p.copy.slot)) return undefined; // a range on an NBD export: readRun hands it to the store
      fds.push(at.fd);
      positions.push(at.position);
    }
  } catch {
    return undefined; // readRun fails these pieces, and the slow path reports
  }
  return { fds, positions };
}

/**
 * The chunks of `whole` read and hashed on one thread of the pool (src/native/read-crc.c), each
 * compared here with its recorded checksum, as `CopyReader.readRun` does on the event loop.
 */
export function readBatch(
  cache: CopyCache,
  batch: { fds: number[]; positions: number[] },
  whole: readonly CopyPiece[],
  out: Buffer,
  failed: CopyPiece[],
): Promise<void> {
  const blocks = cache.blocks;
  const crcs = new Uint32Array(whole.length);
  const sums = new Uint32Array(whole.length * blocks);
  const bufs: Buffer[] = [];
  const tokens: Token[] = [];
  for (const p of whole) {
    const direct = p.inChunk === 0 && p.length === p.chunkLength;
    bufs.push(direct ? out.subarray(p.at, p.at + p.length) : pool.take(p.chunkLength));
    tokens.push(cache.begin(p.copy.slot));
  }
  return new Promise<void>((resolve) => {
    const done = (errors: number[]): void => {
      for (let k = 0; k < whole.length; k++) {
        const p = whole[k] as CopyPiece;
        const buf = bufs[k] as Buffer;
        const partial = p.length < p.chunkLength;
        if (errors[k] !== 0 || crcs[k] !== p.copy.crc >>> 0) failed.push(p);
        else {
          // The chunk's checksum is the combination of its block checksums (read-crc.c): they
          // are kept, so that later small reads of it read only their blocks (after a restart,
          // a whole read is what rebuilds them), and its data for a read of part of it.
          const token = tokens[k] as Token;
          if (cache.sumEntry(p.copy.slot, p.copy.crc) < 0)
            cache.putSums(p.copy.slot, p.copy.crc, sums, token, k * blocks);
          if (partial) {
            buf.copy(out, p.at, p.inChunk, p.inChunk + p.length);
            cache.putData(p.copy.slot, p.copy.crc, buf, token);
          }
        }
        cache.end(p.copy.slot, tokens[k] as Token);
        if (partial) pool.give(buf);
      }
      resolve();
    };
    try {
      (readCrcBatch as NonNullable<NativeFs['readCrcBatch']>)(batch.fds, bufs, batch.positions, crcs, sums, done);
    } catch {
      done(whole.map(() => -1)); // not queued: every piece goes to the slow path
    }
  });
}
