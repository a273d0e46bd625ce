/**
 * The fast path of a snapshot read from the store's copies (snapshot-device.ts): the pieces of
 * one request that read copies, written straight into the reply buffer, each checked before the
 * reply can go out.
 *
 * - A chunk kept verified in the copy cache (copy-cache.ts) is copied from there.
 * - A part of a chunk whose block checksums are kept reads only the 4 KiB blocks it covers, each
 *   checked against its block checksum.
 * - Otherwise whole chunks are read, copies of consecutive chunks that sit in neighbouring slots
 *   of one store file with one read (straight into the reply when the request covers them
 *   whole), and each is checked against its recorded checksum. A chunk read for a part of it is
 *   hashed as 4 KiB blocks (`blockChecksums`: the same pass gives the chunk's checksum), and its
 *   block checksums and data are kept (the rest of it is what a sequential reader asks for next).
 *
 * Anything that does not check out (a block or a chunk mismatch, a read error, a lost copy) is
 * handed back to the caller, whose slow path reads the chunk again whole against its recorded
 * checksum and decides: the bytes, or EIO with the copy recorded lost (damage.ts). Nothing here
 * decides a copy is damaged, and nothing unchecked reaches `out`'s caller.
 *
 * Reads use descriptors of their own on the store's files (copy-locate.ts), so they can read
 * into any buffer without an intermediate one.
 */
import * as pool from '../block/buffer-pool.ts';
import { native } from '../block/native.ts';
import { BLOCK, blockChecksums, checksum } from '../store/checksum.ts';
import type { DiffStore } from '../store/store.ts';
import { batchable, readBatch } from './copy-batch.ts';
import { CopyCache, DEFAULT_COPY_CACHE, type Token } from './copy-cache.ts';
import { NOWAIT_MAX, SlotLocator } from './copy-locate.ts';
import type { Copy } from './exception-table.ts';

/** A part of a request read from a store copy. */
export interface CopyPiece {
  chunk: number;
  copy: Copy;
  /** The chunk's length (a device's last chunk can be short). */
  chunkLength: number;
  /** Offset of the piece inside its chunk, and its length. */
  inChunk: number;
  length: number;
  /** Offset of the piece in the reply. */
  at: number;
}

const readNowait = native?.readNowait;

export class CopyReader {
  readonly cache: CopyCache;
  private readonly store: DiffStore;
  private readonly at: SlotLocator;
  private closed = false;
  /** Block checksums of one chunk, filled and kept within one synchronous step. */
  private readonly scratch: Uint32Array;
  /** Pieces served from kept data, read by blocks, read with their whole chunk; chunks read with a neighbour, on the pool. */
  readonly stats = { data: 0, blocks: 0, whole: 0, joined: 0, batched: 0 };

  constructor(store: DiffStore, cacheBytes = DEFAULT_COPY_CACHE) {
    this.store = store;
    this.cache = new CopyCache(store.chunkSize, cacheBytes);
    this.at = new SlotLocator(store.space, store.chunkSize);
    this.scratch = new Uint32Array(this.cache.blocks);
  }

  /**
   * Fill each piece's part of `out` from its verified copy; the pieces that did not check out
   * are returned. Synchronous (an array) when everything came from the cache or the page cache.
   */
  read(pieces: readonly CopyPiece[], out: Buffer): CopyPiece[] | Promise<CopyPiece[]> {
    const failed: CopyPiece[] = [];
    const waits: Promise<void>[] = [];
    const whole: CopyPiece[] = [];
    for (const p of pieces) {
      if (p.copy.lost || this.closed) {
        failed.push(p);
        continue;
      }
      const kept = this.cache.getData(p.copy.slot, p.copy.crc);
      if (kept !== undefined) {
        this.stats.data += 1;
        kept.copy(out, p.at, p.inChunk, p.inChunk + p.length);
        continue;
      }
      const sums = p.length < p.chunkLength ? this.cache.getSums(p.copy.slot, p.copy.crc) : undefined;
      if (sums === undefined) {
        this.stats.whole += 1;
        whole.push(p);
        continue;
      }
      this.stats.blocks += 1;
      const done = this.readBlocks(p, sums, out);
      if (done === false) whole.push(p);
      else if (done !== true) waits.push(done.then((ok) => (ok ? undefined : this.readRun([p], out, failed))));
    }
    const batch = batchable(whole, this.at);
    if (batch !== undefined) {
      this.stats.batched += whole.length;
      waits.push(readBatch(this.cache, batch, whole, out, failed));
    } else
      for (const run of this.runs(whole)) {
        const done = this.readRun(run, out, failed);
        if (done !== undefined) waits.push(done);
      }
    return waits.length === 0 ? failed : Promise.all(waits).then(() => failed);
  }

  /**
   * `read` for a request of one piece that is all of `out` (the usual small read of a copied
   * chunk: `inChunk`, `length` of the chunk of `copy`, `chunkLength` long), without objects or
   * arrays on its usual paths: true once `out` holds the piece verified, false when it did not
   * check out (the caller reads the chunk whole against its recorded checksum); a promise of
   * either when it waits.
   */
  readOne(copy: Copy, inChunk: number, length: number, chunkLength: number, out: Buffer): boolean | Promise<boolean> {
    if (copy.lost || this.closed) return false;
    const kept = this.cache.getData(copy.slot, copy.crc);
    if (kept !== undefined) {
      this.stats.data += 1;
      kept.copy(out, 0, inChunk, inChunk + length);
      return true;
    }
    if (length < chunkLength) {
      const e = this.cache.sumEntry(copy.slot, copy.crc);
      if (e >= 0) {
        this.stats.blocks += 1;
        const now = this.blocksNow(copy.slot, e, inChunk, out, chunkLength);
        if (now === true) return true;
        if (now === false) return this.readWhole(copy, inChunk, length, chunkLength, out);
        const p: CopyPiece = { chunk: -1, copy, chunkLength, inChunk, length, at: 0 };
        const sums = this.cache.getSums(copy.slot, copy.crc) as Uint32Array;
        const done = this.readBlocks(p, sums, out);
        if (done === true) return true;
        if (done === false) return this.readWhole(copy, inChunk, length, chunkLength, out);
        return done.then((ok) => ok || this.readWhole(copy, inChunk, length, chunkLength, out));
      }
    }
    this.stats.whole += 1;
    return this.readWhole(copy, inChunk, length, chunkLength, out);
  }

  /**
   * The blocks `out` covers from `inChunk` (block-aligned, whole blocks or up to the chunk's
   * end) read straight into it from the page cache, each checked against block checksum entry
   * `e`: whether they check out; undefined when this cannot be done now (unaligned, not cached,
   * a remote range, an error: `readBlocks` then reads them and reports).
   */
  private blocksNow(slot: number, e: number, inChunk: number, out: Buffer, chunkLength: number): boolean | undefined {
    const n = out.length;
    if (inChunk % BLOCK !== 0 || (n % BLOCK !== 0 && inChunk + n !== chunkLength)) return undefined;
    if (n > NOWAIT_MAX || readNowait === undefined) return undefined;
    try {
      if (!this.at.find(slot) || readNowait(this.at.fd, out, this.at.position + inChunk) !== n) return undefined;
    } catch {
      return undefined;
    }
    const first = inChunk / BLOCK;
    if (n <= BLOCK) return checksum(out) === this.cache.sumAt(e, first);
    for (let k = 0; k * BLOCK < n; k++) {
      const block = out.subarray(k * BLOCK, Math.min(n, (k + 1) * BLOCK));
      if (checksum(block) !== this.cache.sumAt(e, first + k)) return false;
    }
    return true;
  }

  /**
   * The chunk of `copy` read whole and checked against its recorded checksum, the piece
   * (`inChunk`, `length`: all of `out`) then copied out. Its block checksums are kept (unless
   * they already are), and its data for a read of part of it: later reads of its other parts
   * (the rest of it is what a sequential reader asks for next) then take the faster paths.
   */
  private readWhole(
    copy: Copy,
    inChunk: number,
    length: number,
    chunkLength: number,
    out: Buffer,
  ): boolean | Promise<boolean> {
    const slot = copy.slot;
    const partial = length < chunkLength;
    const buf = partial ? pool.take(chunkLength) : out;
    const token = this.cache.begin(slot);
    const finish = (ok: boolean): boolean => {
      try {
        if (!ok) return false;
        // Block checksums cost about 40% more hashing than the chunk's alone: only when not kept.
        const sums = this.cache.sumEntry(slot, copy.crc) < 0 && this.cache.sumLimit > 0;
        const crc = sums ? blockChecksums(buf, this.scratch) : checksum(buf);
        if (crc !== copy.crc >>> 0) return false;
        if (sums) this.cache.putSums(slot, copy.crc, this.scratch, token);
        if (partial) {
          buf.copy(out, 0, inChunk, inChunk + length);
          this.cache.putData(slot, copy.crc, buf, token);
        }
        return true;
      } finally {
        this.cache.end(slot, token);
        if (partial) pool.give(buf);
      }
    };
    if (this.readNow(slot, 0, buf)) return finish(true);
    return this.readLater(slot, 0, buf).then(finish);
  }

  /**
   * Only the blocks of `p`, each checked against its kept block checksum: true once in `out`,
   * false if they do not check out (the chunk is then read whole); a promise of either when the
   * blocks are not in the page cache.
   */
  private readBlocks(p: CopyPiece, sums: Uint32Array, out: Buffer): boolean | Promise<boolean> {
    const first = Math.floor(p.inChunk / BLOCK);
    const last = Math.ceil((p.inChunk + p.length) / BLOCK);
    const start = first * BLOCK;
    const end = Math.min(p.chunkLength, last * BLOCK);
    const aligned = start === p.inChunk && end === p.inChunk + p.length;
    const buf = aligned ? out.subarray(p.at, p.at + p.length) : pool.take(end - start);
    if (this.readNow(p.copy.slot, start, buf)) {
      if (aligned && last - first === 1) return checksum(buf) === sums[first]; // one whole block, in place
      return this.checkBlocks(p, buf, aligned, start, sums.subarray(first, last), out);
    }
    const want = sums.slice(first, last); // the kept entry may be reused while we wait
    return this.readLater(p.copy.slot, start, buf).then((ok) =>
      this.checkBlocks(p, buf, aligned, start, ok ? want : undefined, out),
    );
  }

  /**
   * Whether `buf` (the blocks of `p` from `start` in its chunk; `aligned`: a part of `out`)
   * matches `want` (undefined: the read failed); copied into `out` if so.
   */
  private checkBlocks(
    p: CopyPiece,
    buf: Buffer,
    aligned: boolean,
    start: number,
    want: Uint32Array | undefined,
    out: Buffer,
  ): boolean {
    let ok = want !== undefined;
    for (let k = 0; ok && k < (want as Uint32Array).length; k++) {
      const from = k * BLOCK;
      ok = checksum(buf.subarray(from, Math.min(buf.length, from + BLOCK))) === (want as Uint32Array)[k];
    }
    if (!aligned) {
      if (ok) buf.copy(out, p.at, p.inChunk - start, p.inChunk - start + p.length);
      pool.give(buf);
    }
    return ok;
  }

  /** Consecutive chunks whose copies sit in neighbouring slots of one file, in request order. */
  private runs(pieces: CopyPiece[]): CopyPiece[][] {
    const out: CopyPiece[][] = [];
    let prev: { path: string; offset: number } | undefined;
    for (const p of pieces) {
      const at = this.store.space.locate(p.copy.slot);
      const run = out[out.length - 1];
      const last = run?.[run.length - 1];
      const joins =
        run !== undefined &&
        last !== undefined &&
        prev !== undefined &&
        p.chunk === last.chunk + 1 &&
        last.chunkLength === this.store.chunkSize &&
        at.path === prev.path &&
        at.offset === prev.offset + this.store.chunkSize;
      if (joins) run.push(p);
      else out.push([p]);
      prev = at;
    }
    return out;
  }

  /** The chunks of `run` whole with one read, each checked against its recorded checksum (undefined: done now). */
  private readRun(run: CopyPiece[], out: Buffer, failed: CopyPiece[]): Promise<void> | undefined {
    const cs = this.store.chunkSize;
    const first = run[0] as CopyPiece;
    const last = run[run.length - 1] as CopyPiece;
    const length = (run.length - 1) * cs + last.chunkLength;
    // Straight into the reply when the request covers every chunk of the run whole.
    const direct = run.every((p) => p.inChunk === 0 && p.length === p.chunkLength);
    if (run.length > 1) this.stats.joined += run.length;
    const buf = direct ? out.subarray(first.at, first.at + length) : pool.take(length);
    const tokens = run.map((p) => this.cache.begin(p.copy.slot));
    const finish = (ok: boolean): void => {
      try {
        if (ok) this.checkRun(run, buf, direct, tokens, out, failed);
        else failed.push(...run);
      } finally {
        for (const [k, p] of run.entries()) this.cache.end(p.copy.slot, tokens[k] as Token);
        if (!direct) pool.give(buf);
      }
    };
    if (this.readNow(first.copy.slot, 0, buf)) {
      finish(true);
      return undefined;
    }
    return this.readLater(first.copy.slot, 0, buf).then(finish);
  }

  private checkRun(
    run: CopyPiece[],
    buf: Buffer,
    direct: boolean,
    tokens: Token[],
    out: Buffer,
    failed: CopyPiece[],
  ): void {
    const cs = this.store.chunkSize;
    const sums = new Uint32Array(this.cache.blocks);
    for (const [k, p] of run.entries()) {
      const data = buf.subarray(k * cs, k * cs + p.chunkLength);
      const partial = p.length < p.chunkLength;
      // Block checksums cost about 40% more hashing than the chunk's alone: only for a read of
      // part of a chunk, which is where later reads of other parts of it come from.
      const crc = partial ? blockChecksums(data, sums) : checksum(data);
      if (crc !== p.copy.crc >>> 0) {
        failed.push(p);
        continue;
      }
      if (!direct) data.copy(out, p.at, p.inChunk, p.inChunk + p.length);
      if (partial) {
        const token = tokens[k] as Token;
        this.cache.putSums(p.copy.slot, p.copy.crc, sums, token);
        this.cache.putData(p.copy.slot, p.copy.crc, data, token);
      }
    }
  }

  private readNow(slot: number, inSlot: number, buf: Buffer): boolean {
    return this.at.readNow(slot, inSlot, buf);
  }

  private readLater(slot: number, inSlot: number, buf: Buffer): Promise<boolean> {
    return this.at.readLater(slot, inSlot, buf);
  }

  /** Close the descriptors and drop the cache (the store is closing). */
  close(): void {
    this.closed = true;
    this.at.close();
    this.cache.clear();
  }
}

const readers = new WeakMap<DiffStore, CopyReader>();

/** The reader of `store`'s copies (one per store, made on first use with `cacheBytes`). */
export function copyReaderOf(store: DiffStore, cacheBytes?: number): CopyReader {
  let r = readers.get(store);
  if (r === undefined) {
    r = new CopyReader(store, cacheBytes);
    readers.set(store, r);
  }
  return r;
}

/**
 * For the copy-on-write path: the checksum of a chunk copy about to be written to `slot` (what
 * its EXCEPTION records), computed with the checksums of its 4 KiB blocks, so that the first
 * snapshot reads of parts of it read only the blocks they need. Call `keep()` once the copy's
 * record is durable (the block checksums are then kept, unless the slot was freed meanwhile),
 * `drop()` if it is not made.
 */
export function copyChecksum(
  store: DiffStore,
  slot: number,
  data: Uint8Array,
): { crc: number; keep(): void; drop(): void } {
  const cache = readers.get(store)?.cache;
  if (cache === undefined || cache.sumLimit === 0 || data.length <= BLOCK) {
    return { crc: checksum(data), keep: () => undefined, drop: () => undefined };
  }
  const sums = new Uint32Array(cache.blocks);
  const crc = blockChecksums(data, sums);
  const token = cache.begin(slot);
  let open = true;
  const end = (keep: boolean) => {
    if (!open) return;
    open = false;
    if (keep) cache.putSums(slot, crc, sums, token);
    cache.end(slot, token);
  };
  return { crc, keep: () => end(true), drop: () => end(false) };
}

/** `slot` of `store` was freed: nothing kept of it may be served again. */
export function forgetSlot(store: DiffStore, slot: number): void {
  readers.get(store)?.cache.forget(slot);
}

/** The store is closing: close the reader's descriptors. */
export function closeCopyReader(store: DiffStore): void {
  readers.get(store)?.close();
  readers.delete(store);
}
