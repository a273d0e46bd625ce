/**
 * What a snapshot read has verified of the store's copies, kept in bounded memory so later reads
 * need less I/O and hashing, never less checking. Two parts, both keyed by store slot and by the
 * copy's recorded checksum (a lookup for another copy in the same slot misses):
 *
 * - **data**: whole chunks whose bytes matched their recorded checksum, least recently used
 *   first out. A read served from here returns exactly the bytes that were verified; the disk
 *   is not read again (damage made on disk since is found by the next read that misses, by
 *   `store scrub` or `store check`).
 * - **block checksums**: the checksum of each 4 KiB block of a chunk, computed from the data
 *   when it was copied (copy-read.ts `copyChecksum`), or while verifying the whole chunk against
 *   its recorded checksum (checksum.ts `blockChecksums`, read-crc.c: the chunk's checksum is the
 *   combination of its blocks'), as the first read of a chunk after a restart does; evicted
 *   with a second chance (an approximation of least recently used). A read of part of the chunk then reads only the
 *   blocks it needs and checks each against its block checksum: the bytes served are checked on
 *   every read, against a checksum derived from bytes that matched the recorded one. A block
 *   that does not match sends the read back to the whole chunk and its recorded checksum
 *   (damaged: EIO, LOST). Not a "verified" flag: nothing is served unchecked.
 *
 * A slot's entries are dropped when the slot is freed (`forget`, from the recorder, before the
 * store may hand the slot out again); a read that was in flight across a `forget` of its slot
 * does not insert what it read (`begin`/`end` tokens), so a reused slot never serves old bytes.
 *
 * Memory: at most `bytes` (`serve --copy-cache`, default 32 MiB): a quarter, at most 4 MiB, for
 * block checksums (about 110 bytes a chunk of 64 KiB: 38,000 chunks, 2.4 GiB of copies), the
 * rest for data (448 chunks of 64 KiB). 0 turns both off.
 */
import { NbdsnapError } from '../errors.ts';
import { BLOCK } from '../store/checksum.ts';

export const DEFAULT_COPY_CACHE = 32 * 1024 * 1024;
/** Bytes a block-checksum entry costs beyond its checksums (map entry, bookkeeping), estimated. */
const SUM_OVERHEAD = 48;
/** Block-checksum entries are kept in typed arrays of this many entries each, made as needed. */
const SEGMENT = 1024;

/** A read in flight over a slot: stale once the slot was freed meanwhile. */
export interface Token {
  stale: boolean;
  n: number;
}

export class CopyCache {
  readonly chunkSize: number;
  /** Block checksums a chunk has (chunkSize / 4 KiB). */
  readonly blocks: number;
  readonly dataLimit: number;
  readonly sumLimit: number;
  /** slot -> the verified chunk (its chunk length) and the copy's checksum; Map order = LRU. */
  private readonly data = new Map<number, { crc: number; buf: Buffer }>();
  private dataBytes = 0;
  /** Buffers of evicted entries, reused for the next inserts. */
  private spare: Buffer[] = [];
  /**
   * slot -> entry index; an entry is [copy crc, block checksums...] in `segments`. Map order is
   * insertion order, evicted with a second chance (CLOCK): a hit only sets the entry's bit in
   * `used`, and eviction moves entries whose bit is set to the back (clearing it) instead of
   * dropping them, so the small reads that hit cost no map updates.
   */
  private readonly sums = new Map<number, number>();
  private readonly used: Uint8Array;
  private readonly segments: Uint32Array[] = [];
  private readonly freeEntries: number[] = [];
  private entries = 0;
  private readonly sumCapacity: number;
  private readonly pending = new Map<number, Token>();

  constructor(chunkSize: number, bytes = DEFAULT_COPY_CACHE) {
    this.chunkSize = chunkSize;
    this.blocks = Math.max(1, Math.ceil(chunkSize / BLOCK));
    // Block checksums only help when a chunk holds more than one block.
    this.sumLimit = this.blocks > 1 ? Math.min(4 * 1024 * 1024, Math.floor(bytes / 4)) : 0;
    this.dataLimit = Math.max(0, bytes - this.sumLimit);
    this.sumCapacity = Math.floor(this.sumLimit / ((this.blocks + 1) * 4 + SUM_OVERHEAD));
    this.used = new Uint8Array(this.sumCapacity);
  }

  /** Bytes held now (data buffers, spare buffers, block-checksum arrays). */
  get bytes(): number {
    const spare = this.spare.reduce((n, b) => n + b.length, 0);
    return this.dataBytes + spare + this.segments.reduce((n, seg) => n + seg.byteLength, 0);
  }

  /** Chunks held: [data, block checksums]. */
  get counts(): [number, number] {
    return [this.data.size, this.sums.size];
  }

  /** The verified chunk of `slot` if it holds the copy with checksum `crc` (a u32). */
  getData(slot: number, crc: number): Buffer | undefined {
    const e = this.data.get(slot);
    if (e === undefined || e.crc !== crc >>> 0) return undefined;
    this.data.delete(slot);
    this.data.set(slot, e);
    return e.buf;
  }

  /** Keep a copy of `bytes`, the verified chunk of `slot` (checksum `crc`), unless `token` went stale. */
  putData(slot: number, crc: number, bytes: Uint8Array, token: Token): void {
    if (token.stale || bytes.length > this.dataLimit) return;
    const old = this.data.get(slot);
    if (old !== undefined) {
      this.data.delete(slot);
      this.dataBytes -= old.buf.length;
      this.spare.push(old.buf);
    }
    while (this.dataBytes + bytes.length > this.dataLimit) {
      const [first, e] = this.data.entries().next().value as [number, { crc: number; buf: Buffer }];
      this.data.delete(first);
      this.dataBytes -= e.buf.length;
      this.spare.push(e.buf);
    }
    let buf = this.spare.pop();
    this.spare = []; // evicted buffers are reused once; the rest go to the collector
    if (buf === undefined || buf.length !== bytes.length) buf = Buffer.allocUnsafeSlow(bytes.length);
    buf.set(bytes);
    this.data.set(slot, { crc: crc >>> 0, buf });
    this.dataBytes += buf.length;
  }

  /** The block checksums of `slot` if it holds the copy with checksum `crc`: a view, valid until the next insert. */
  getSums(slot: number, crc: number): Uint32Array | undefined {
    const i = this.sums.get(slot);
    if (i === undefined) return undefined;
    const e = this.entry(i);
    if (e[0] !== crc >>> 0) return undefined;
    this.used[i] = 1;
    return e.subarray(1);
  }

  /**
   * `getSums` without a view (the 4 KiB read's fast path): the entry of `slot`'s block checksums
   * if it holds the copy with checksum `crc`, else -1; read them with `sumAt` before the next insert.
   */
  sumEntry(slot: number, crc: number): number {
    const i = this.sums.get(slot);
    if (i === undefined) return -1;
    const seg = this.segments[(i / SEGMENT) | 0] as Uint32Array;
    if (seg[(i % SEGMENT) * (this.blocks + 1)] !== crc >>> 0) return -1;
    this.used[i] = 1;
    return i;
  }

  /** Block checksum `k` of entry `i` (from `sumEntry`). */
  sumAt(i: number, k: number): number {
    return (this.segments[(i / SEGMENT) | 0] as Uint32Array)[(i % SEGMENT) * (this.blocks + 1) + 1 + k] as number;
  }

  /**
   * Keep the block checksums `sums` of `slot` (copy checksum `crc`; from `sums[from]`), unless
   * `token` went stale.
   */
  putSums(slot: number, crc: number, sums: Uint32Array, token: Token, from = 0): void {
    if (token.stale || this.sumCapacity === 0) return;
    let i = this.sums.get(slot);
    if (i === undefined) {
      i = this.sums.size >= this.sumCapacity ? this.evictSums() : (this.freeEntries.pop() ?? this.entries++);
      this.sums.set(slot, i);
    }
    this.used[i] = 0;
    const seg = this.segment(i);
    const at = (i % SEGMENT) * (this.blocks + 1);
    seg[at] = crc >>> 0;
    for (let k = 0; k < this.blocks; k++) seg[at + 1 + k] = sums[from + k] as number;
  }

  /** Drop the first entry in map order not used since it was last passed; returns its index. */
  private evictSums(): number {
    for (const [slot, i] of this.sums) {
      this.sums.delete(slot);
      if (this.used[i] === 0) return i;
      this.used[i] = 0;
      this.sums.set(slot, i); // to the back: visited again, now unused, if every other one is used too
    }
    throw new NbdsnapError('EIO', 'copy cache: no block-checksum entry to evict'); // unreachable: the map is full
  }

  /** The segment holding entry `i` (made as needed). */
  private segment(i: number): Uint32Array {
    const s = (i / SEGMENT) | 0;
    while (this.segments.length <= s) {
      const entries = Math.min(SEGMENT, this.sumCapacity - this.segments.length * SEGMENT);
      this.segments.push(new Uint32Array(entries * (this.blocks + 1)));
    }
    return this.segments[s] as Uint32Array;
  }

  private entry(i: number): Uint32Array {
    const width = this.blocks + 1;
    const at = (i % SEGMENT) * width;
    return this.segment(i).subarray(at, at + width);
  }

  /** A read of `slot` starts: what it verifies may be kept unless the slot is freed before `end`. */
  begin(slot: number): Token {
    let t = this.pending.get(slot);
    if (t === undefined) {
      t = { stale: false, n: 0 };
      this.pending.set(slot, t);
    }
    t.n += 1;
    return t;
  }

  end(slot: number, token: Token): void {
    token.n -= 1;
    if (token.n === 0 && this.pending.get(slot) === token) this.pending.delete(slot);
  }

  /** `slot` was freed: drop what is kept of it, and what reads in flight would keep. */
  forget(slot: number): void {
    const t = this.pending.get(slot);
    if (t !== undefined) {
      t.stale = true;
      this.pending.delete(slot);
    }
    const d = this.data.get(slot);
    if (d !== undefined) {
      this.data.delete(slot);
      this.dataBytes -= d.buf.length;
    }
    const i = this.sums.get(slot);
    if (i !== undefined) {
      this.sums.delete(slot);
      this.freeEntries.push(i);
    }
  }

  clear(): void {
    for (const t of this.pending.values()) t.stale = true;
    this.pending.clear();
    this.data.clear();
    this.dataBytes = 0;
    this.spare = [];
    for (const i of this.sums.values()) this.freeEntries.push(i);
    this.sums.clear();
  }
}
