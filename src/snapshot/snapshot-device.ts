/**
 * The device behind a snapshot export (`DEVICE@SNAP`): the origin as it was when the snapshot
 * was taken. Each chunk is read from where the exception table says: the snapshot's own
 * private copy (writable snapshots), a preserved copy in the store, or the origin itself.
 * Origin reads register with the chunk guard first, so a concurrent copy-before-write does not
 * let the origin be overwritten under them.
 *
 * A chunk read from the store is read whole (its chunk length, once per request) and checked
 * against the checksum recorded with its copy; only then is the requested part returned. On a
 * mismatch the read answers EIO and `onDamaged` records the copy lost (damage.ts): every later
 * read of it answers EIO too, and it never falls through to the origin's newer data.
 *
 * Writes (only with `--writable`) never touch the origin, and never change a slot in place:
 * each write to a chunk is redirect-on-write. The whole chunk (the snapshot's view of it, with
 * the new bytes in place) goes to a NEW slot, a PRIVATE record with that slot and the data's
 * checksum is committed, and only then is the previous private slot released. A crash leaves
 * either the old mapping (its slot untouched) or the new one (its data durable before its
 * record), never a chunk whose data disagrees with its recorded checksum. Every write costs a
 * commit; concurrent writes share it (group commit). A snapshot whose store ran out of room
 * answers ENOSPC to its own writes; an invalidated snapshot answers EIO to everything.
 */
import * as pool from '../block/buffer-pool.ts';
import { type BlockDevice, DATA, type DeviceCapabilities } from '../block/device.ts';
import { NbdsnapError } from '../errors.ts';
import type { Extent } from '../nbd-protocol/index.ts';
import { checksum } from '../store/checksum.ts';
import type { DiffStore } from '../store/store.ts';
import { readVerified } from '../store/verify.ts';
import { ChunkGuard } from './chunk-guard.ts';
import { type CopyPiece, type CopyReader, copyReaderOf } from './copy-read.ts';
import { damagedCopyError } from './damage.ts';
import { type Copy, sameCopy } from './exception-table.ts';
import type { Snapshot } from './model.ts';
import type { RecordSink } from './recorder.ts';
import { snapshotExtents } from './snapshot-extents.ts';

interface Piece {
  chunk: number;
  /** Offset of the piece inside its chunk. */
  inChunk: number;
  length: number;
  /** Offset of the piece in the request. */
  at: number;
}

export class SnapshotDevice implements BlockDevice {
  readonly snapshot: Snapshot;
  private readonly origin: BlockDevice;
  private readonly store: DiffStore;
  private readonly privateGuard = new ChunkGuard();
  private readonly track: (offset: number, length: number) => Promise<void>;
  private readonly sink: RecordSink;
  private readonly onDamaged: (chunk: number, copy: Copy) => Promise<void>;
  /** Reads of the store's copies, with what was verified kept (copy-read.ts, copy-cache.ts). */
  private readonly copies: CopyReader;
  /** Writes in flight, and who waits for there to be none (`quiesce`). */
  private writes = 0;
  private readonly quiesced: (() => void)[] = [];
  /** A merge of the snapshot is starting: requests are refused (see `fence`). */
  private fenced = false;

  /**
   * `origin` is the device below the COW layer; `store` the difference store; `track` records a
   * write to this snapshot for change tracking before it is made; `sink` commits a record and
   * applies it to the catalog (a private chunk); `onDamaged` records a copy found damaged
   * (resolves once recorded).
   */
  constructor(
    snapshot: Snapshot,
    origin: BlockDevice,
    store: DiffStore,
    track: (offset: number, length: number) => Promise<void>,
    sink: RecordSink,
    onDamaged: (chunk: number, copy: Copy) => Promise<void>,
  ) {
    this.snapshot = snapshot;
    this.origin = origin;
    this.store = store;
    this.track = track;
    this.sink = sink;
    this.onDamaged = onDamaged;
    this.copies = copyReaderOf(store);
  }

  get size(): number {
    return this.snapshot.origin.size;
  }

  get capabilities(): DeviceCapabilities {
    return {
      writable: this.snapshot.writable,
      durable: !this.store.transient,
      trim: false,
      fastZero: false,
      multiConn: true,
    };
  }

  private check(): void {
    if (this.snapshot.state === 'invalid') {
      throw new NbdsnapError(
        'EIO',
        `snapshot ${this.snapshot.origin.name}@${this.snapshot.name} is invalid: ${this.snapshot.reason ?? ''}`,
      );
    }
    if (this.snapshot.state === 'merging' || this.fenced) {
      // A connection opened before the merge began: the snapshot is the origin's content now
      // (and what it would read here changes under the merge), then it is released.
      throw new NbdsnapError(
        'EIO',
        `snapshot ${this.snapshot.origin.name}@${this.snapshot.name} is being merged into its origin`,
      );
    }
  }

  /**
   * A merge is about to start: refuse requests from now on, and resolve once no write is in
   * flight (its private chunk is then in the catalog, so the merge takes it). `unfence` if the
   * merge could not be recorded.
   */
  fence(): Promise<void> {
    this.fenced = true;
    return this.quiesce();
  }

  unfence(): void {
    this.fenced = false;
  }

  /** Resolves once no write to this snapshot is in flight. */
  quiesce(): Promise<void> {
    if (this.writes === 0) return Promise.resolve();
    return new Promise((resolve) => this.quiesced.push(resolve));
  }

  private pieces(offset: number, length: number): Piece[] {
    const cs = this.snapshot.origin.chunkSize;
    const out: Piece[] = [];
    for (let at = 0; at < length; ) {
      const pos = offset + at;
      const chunk = Math.floor(pos / cs);
      const inChunk = pos - chunk * cs;
      const n = Math.min(cs - inChunk, length - at);
      out.push({ chunk, inChunk, length: n, at });
      at += n;
    }
    return out;
  }

  read(offset: number, length: number): Promise<Buffer> {
    try {
      this.check();
      const one = this.readOneCopy(offset, length);
      if (one !== undefined) return one;
    } catch (err) {
      return Promise.reject(err);
    }
    return this.readPieces(offset, length);
  }

  /**
   * A read inside one chunk that this snapshot reads from the store (the usual small read of a
   * copied chunk), without the general path's arrays; undefined for any other read.
   */
  private readOneCopy(offset: number, length: number): Promise<Buffer> | undefined {
    const origin = this.snapshot.origin;
    const cs = origin.chunkSize;
    const chunk = Math.floor(offset / cs);
    const inChunk = offset - chunk * cs;
    if (length === 0 || inChunk + length > cs) return undefined;
    const copy = origin.table.copyFor(chunk, this.snapshot);
    if (copy === undefined) return undefined;
    const out = pool.take(length);
    const got = this.copies.readOne(copy, inChunk, length, origin.chunkLength(chunk), out);
    if (got === true) {
      this.check(); // invalidated meanwhile: the data may be wrong
      return Promise.resolve(out);
    }
    return this.finishOne(chunk, copy, inChunk, out, got);
  }

  /** `readOneCopy` once the fast path waited or failed: the chunk read whole, verified, or EIO. */
  private async finishOne(chunk: number, copy: Copy, at: number, out: Buffer, got: false | Promise<boolean>) {
    if (got === false || !(await got)) {
      const b = await this.readChunk(chunk, copy);
      b.copy(out, 0, at, at + out.length);
    }
    this.check(); // invalidated while reading: the data may be wrong
    return out;
  }

  private async readPieces(offset: number, length: number): Promise<Buffer> {
    this.check();
    const { table, guard, chunkSize } = this.snapshot.origin;
    const pieces = this.pieces(offset, length);
    const found: (Copy | undefined)[] = [];
    let stored = 0;
    for (const p of pieces) {
      const copy = table.copyFor(p.chunk, this.snapshot);
      found.push(copy);
      if (copy !== undefined) stored += 1;
    }
    if (stored === 0) {
      // Every chunk is read through: the origin's own buffer (pooled) is the reply, not a copy of it.
      const done = guard.beginRead(pieces.map((p) => p.chunk));
      try {
        const data = await this.origin.read(offset, length);
        this.check();
        return data;
      } finally {
        done();
      }
    }
    // Pooled, like the origin's buffers: the reply gives it back once sent, and the origin's
    // buffers are given back once copied, so reads make no garbage for the GC to catch up with.
    const out = pool.take(length);
    const fromOrigin: Piece[] = [];
    const fromStore: CopyPiece[] = [];
    const reads: Promise<void>[] = [];
    const origin = this.snapshot.origin;
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i] as Piece;
      const copy = found[i];
      if (copy === undefined) fromOrigin.push(p);
      else
        fromStore.push({
          chunk: p.chunk,
          copy,
          chunkLength: origin.chunkLength(p.chunk),
          inChunk: p.inChunk,
          length: p.length,
          at: p.at,
        });
    }
    if (fromStore.length > 0) {
      // Verified copies straight into `out` (copy-read.ts); what does not check out there is read
      // again whole against its recorded checksum (`slowPieces`), which decides: bytes or EIO.
      const got = this.copies.read(fromStore, out);
      const rest = Array.isArray(got) ? this.slowPieces(got, out) : got.then((failed) => this.slowPieces(failed, out));
      if (rest !== undefined) reads.push(rest);
    }
    if (fromOrigin.length > 0) {
      // Registered before any await: a copy of these chunks now waits for this read.
      const done = guard.beginRead(fromOrigin.map((p) => p.chunk));
      const runs = contiguous(fromOrigin);
      reads.push(
        Promise.all(
          runs.map(async (run) => {
            const first = run[0] as Piece;
            const last = run[run.length - 1] as Piece;
            const start = first.chunk * chunkSize + first.inChunk;
            const data = await this.origin.read(start, last.at + last.length - first.at);
            data.copy(out, first.at);
            pool.give(data);
          }),
        ).then(done, (err) => {
          done();
          throw err;
        }),
      );
    }
    if (reads.length > 0) await Promise.all(reads);
    this.check(); // invalidated while reading: the data may be wrong
    return out;
  }

  /** The pieces the fast path handed back, each from its whole chunk, verified (or EIO). */
  private slowPieces(failed: CopyPiece[], out: Buffer): Promise<void> | undefined {
    if (failed.length === 0) return undefined;
    return Promise.all(
      failed.map((p) =>
        this.readChunk(p.chunk, p.copy).then((b) => void b.copy(out, p.at, p.inChunk, p.inChunk + p.length)),
      ),
    ).then(() => undefined);
  }

  /** The whole chunk from its store copy, verified against the copy's checksum. */
  private async readChunk(chunk: number, first: Copy): Promise<Buffer> {
    const snap = this.snapshot;
    const length = snap.origin.chunkLength(chunk);
    for (let copy = first; ; ) {
      if (!copy.lost) {
        const data = await readVerified(this.store, copy.slot, copy.crc, length);
        if (data !== undefined) return data;
        this.check(); // deleted or invalidated meanwhile: its slots may have been reused
        // A write to a private chunk moved it to a new slot meanwhile: read that one.
        const now = snap.origin.table.resolve(chunk, snap);
        if (now.from === 'store' && !sameCopy(now.copy, copy)) {
          copy = now.copy;
          continue;
        }
      }
      throw await damagedCopyError(`snapshot ${snap.origin.name}@${snap.name}: `, chunk, copy, this.onDamaged);
    }
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.check();
    this.writes += 1;
    try {
      await this.track(offset, data.length);
      await Promise.all(
        this.pieces(offset, data.length).map((p) => this.writePiece(p, data.subarray(p.at, p.at + p.length))),
      );
      if (fua) await this.store.sync();
    } finally {
      this.writes -= 1;
      if (this.writes === 0) for (const w of this.quiesced.splice(0)) w();
    }
  }

  async writeZeroes(offset: number, length: number, options: { fua: boolean; fast: boolean }): Promise<void> {
    if (options.fast) throw new NbdsnapError('ENOTSUP', 'snapshot zeroing is not faster than writing');
    await this.write(offset, Buffer.alloc(length), options.fua);
  }

  async trim(): Promise<void> {
    // A hint; the snapshot keeps its contents.
  }

  private async writePiece(p: Piece, bytes: Buffer): Promise<void> {
    const snap = this.snapshot;
    for (
      let busy = this.privateGuard.inProgress(p.chunk);
      busy !== undefined;
      busy = this.privateGuard.inProgress(p.chunk)
    ) {
      await busy;
    }
    const done = this.privateGuard.claim(p.chunk);
    try {
      const length = snap.origin.chunkLength(p.chunk);
      // The whole chunk is written: no need to read it (and a lost chunk is whole again).
      const base =
        p.inChunk === 0 && bytes.length === length
          ? Buffer.from(bytes)
          : await this.read(p.chunk * snap.origin.chunkSize, length);
      bytes.copy(base, p.inChunk);
      const slot = this.store.allocate();
      if (slot === undefined)
        throw new NbdsnapError('ENOSPC', 'difference store full: the snapshot cannot take more writes');
      const crc = checksum(base);
      try {
        await this.store.writeSlot(slot, base);
      } catch (err) {
        this.store.release(slot);
        throw err;
      }
      // Into the catalog once durable. If it cannot be made durable the write fails, and the slot
      // stays allocated (the record may have reached the disk).
      await this.sink.record([{ type: 'PRIVATE', snapshot: snap.id, chunk: p.chunk, slot, crc }]);
      // Invalidated or deleted meanwhile: the record freed the slot again (transition.ts).
      if (snap.state === 'invalid') this.check();
    } finally {
      done();
    }
  }

  flush(): Promise<void> {
    return this.store.sync();
  }

  async cache(): Promise<void> {}

  /** base:allocation: chunks held in the store are data; the rest is whatever the origin says. */
  async extents(offset: number, length: number): Promise<Extent[]> {
    this.check();
    return snapshotExtents(
      this.snapshot,
      this.size,
      offset,
      length,
      (start, len) => this.origin.extents(start, len),
      DATA,
    );
  }

  /** qemu:allocation-depth: 1 = held in the difference store, 2 = read through to the origin. */
  async depthExtents(offset: number, length: number): Promise<Extent[]> {
    this.check();
    return snapshotExtents(this.snapshot, this.size, offset, length, async (_s, len) => [{ length: len, flags: 2 }], 1);
  }

  async close(): Promise<void> {}
}

/** Split pieces into runs that are adjacent in the device. */
function contiguous(pieces: Piece[]): Piece[][] {
  const runs: Piece[][] = [];
  for (const p of pieces) {
    const run = runs[runs.length - 1];
    const last = run?.[run.length - 1];
    if (run !== undefined && last !== undefined && last.at + last.length === p.at) run.push(p);
    else runs.push([p]);
  }
  return runs;
}
