/**
 * The device behind a snapshot export (`DEVICE@SNAP`): the origin as it was when the snapshot
 * was taken. Each chunk is read from where the exception table says: the snapshot's own
 * private copy (writable snapshots), a preserved copy in the store, or the origin itself.
 * Origin reads register with the chunk guard first, so a concurrent copy-before-write does not
 * let the origin be overwritten under them.
 *
 * Writes (only with `--writable`) never touch the origin: the first write to a chunk copies it
 * into a private store slot (whole chunk, with the new bytes in place); later writes go to that
 * slot. A snapshot whose store ran out of room answers ENOSPC to its own writes; an invalidated
 * snapshot answers EIO to everything.
 */
import { type BlockDevice, DATA, type DeviceCapabilities, pushExtent } from '../block/device.ts';
import { NbdsnapError } from '../errors.ts';
import type { Extent } from '../nbd-protocol/index.ts';
import type { DiffStore } from '../store/store.ts';
import type { RecordSink } from './recorder.ts';
import { ChunkGuard } from './chunk-guard.ts';
import type { Snapshot } from './model.ts';

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
  /** Writes in flight, and who waits for there to be none (`quiesce`). */
  private writes = 0;
  private readonly quiesced: (() => void)[] = [];
  /** A merge of the snapshot is starting: requests are refused (see `fence`). */
  private fenced = false;

  /**
   * `origin` is the device below the COW layer; `store` the difference store; `track` records a
   * write to this snapshot for change tracking before it is made; `sink` commits a record and
   * applies it to the catalog (a private chunk).
   */
  constructor(
    snapshot: Snapshot,
    origin: BlockDevice,
    store: DiffStore,
    track: (offset: number, length: number) => Promise<void>,
    sink: RecordSink,
  ) {
    this.snapshot = snapshot;
    this.origin = origin;
    this.store = store;
    this.track = track;
    this.sink = sink;
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

  async read(offset: number, length: number): Promise<Buffer> {
    this.check();
    const { table, guard, chunkSize } = this.snapshot.origin;
    const out = Buffer.allocUnsafe(length);
    const fromOrigin: Piece[] = [];
    const reads: Promise<void>[] = [];
    for (const p of this.pieces(offset, length)) {
      const src = table.resolve(p.chunk, this.snapshot);
      if (src.from === 'origin') fromOrigin.push(p);
      else reads.push(this.store.readSlot(src.slot, p.length, p.inChunk).then((b) => void b.copy(out, p.at)));
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
          }),
        ).then(done, (err) => {
          done();
          throw err;
        }),
      );
    }
    await Promise.all(reads);
    this.check(); // invalidated while reading: the data may be wrong
    return out;
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
    const own = snap.privateChunks.get(p.chunk);
    if (own !== undefined) return this.store.writeSlot(own, bytes, p.inChunk);
    const done = this.privateGuard.claim(p.chunk);
    try {
      const length = snap.origin.chunkLength(p.chunk);
      const chunkStart = p.chunk * snap.origin.chunkSize;
      const base = await this.read(chunkStart, length);
      bytes.copy(base, p.inChunk);
      const slot = this.store.allocate();
      if (slot === undefined)
        throw new NbdsnapError('ENOSPC', 'difference store full: the snapshot cannot take more writes');
      try {
        await this.store.writeSlot(slot, base);
      } catch (err) {
        this.store.release(slot);
        throw err;
      }
      // Into the catalog once durable. If it cannot be made durable the write fails, and the slot
      // stays allocated (the record may have reached the disk).
      await this.sink.record([{ type: 'PRIVATE', snapshot: snap.id, chunk: p.chunk, slot }]);
    } finally {
      done();
    }
  }

  flush(): Promise<void> {
    return this.store.sync();
  }

  async cache(): Promise<void> {}

  /** base:allocation: chunks held in the store are data; the rest is whatever the origin says. */
  extents(offset: number, length: number): Promise<Extent[]> {
    return this.mapExtents(
      offset,
      length,
      (start, len) => this.origin.extents(start, len),
      () => DATA,
    );
  }

  /** qemu:allocation-depth: 1 = held in the difference store, 2 = read through to the origin. */
  depthExtents(offset: number, length: number): Promise<Extent[]> {
    return this.mapExtents(
      offset,
      length,
      async (_s, len) => [{ length: len, flags: 2 }],
      () => 1,
    );
  }

  private async mapExtents(
    offset: number,
    length: number,
    originExtents: (start: number, len: number) => Promise<Extent[]>,
    storeFlags: () => number,
  ): Promise<Extent[]> {
    this.check();
    const end = Math.min(this.size, offset + length);
    const { table } = this.snapshot.origin;
    const out: Extent[] = [];
    const pieces = this.pieces(offset, end - offset);
    for (let i = 0; i < pieces.length && out.length < 65536; ) {
      const fromStore = table.resolve((pieces[i] as Piece).chunk, this.snapshot).from === 'store';
      let j = i;
      let len = 0;
      while (
        j < pieces.length &&
        (table.resolve((pieces[j] as Piece).chunk, this.snapshot).from === 'store') === fromStore
      ) {
        len += (pieces[j] as Piece).length;
        j++;
      }
      const start = offset + (pieces[i] as Piece).at;
      if (fromStore) pushExtent(out, len, storeFlags());
      else {
        let covered = 0;
        while (covered < len) {
          const ext = await originExtents(start + covered, len - covered);
          for (const e of ext) {
            const take = Math.min(e.length, len - covered);
            pushExtent(out, take, e.flags);
            covered += take;
            if (covered >= len) break;
          }
          if (ext.length === 0) break;
        }
      }
      i = j;
    }
    return out;
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
