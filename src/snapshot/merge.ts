/**
 * Merge: roll an origin back to one of its snapshots, online (LVM's snapshot-merge).
 *
 * From the moment a merge starts the origin export reads exactly as the snapshot: `MergeLayer`
 * (on top of the COW layer) sends reads of chunks not yet merged to the snapshot's copies in
 * the store. In the background `MergeJob` copies those chunks back, in runs of consecutive
 * chunks: read the run from the store, write it to the origin *through the COW layer* (so every
 * other snapshot first preserves what is about to be overwritten), flush the origin, then record
 * the run as merged, durably, before the next run. A crash resumes from the records; copying a
 * run again whose record was lost is harmless, since no client write reached it (below).
 *
 * A client write to a chunk not yet merged first merges that chunk (waiting for the run in
 * progress if it is one), so the write lands on merged data and the merge never overwrites it.
 */
import { type BlockDevice, Layer, type ZeroOptions } from '../block/device.ts';
import { errorMessage, NbdsnapError } from '../errors.ts';
import type { DiffStore } from '../store/store.ts';
import { ChunkGuard } from './chunk-guard.ts';
import type { CowOrigin } from './cow-origin.ts';
import type { Snapshot } from './model.ts';

/** Chunks merged per run (bounded so client writes never wait long). */
const RUN_CHUNKS = 16;

export type MergeState = 'merging' | 'failed' | 'done';

export class MergeJob {
  readonly snapshot: Snapshot;
  state: MergeState = 'merging';
  failure: { chunk: number; error: string } | undefined;
  /** Chunks the snapshot holds in the store, ascending: what has to be copied back. */
  readonly chunks: number[];
  readonly merged: Set<number>;
  private readonly guard = new ChunkGuard();
  private readonly cow: CowOrigin;
  readonly store: DiffStore;
  private started = Date.now();
  private bytesSinceStart = 0;
  private running: Promise<void> | undefined;
  private readonly onDone: (job: MergeJob) => Promise<void>;
  private readonly onFail: (job: MergeJob) => void;

  constructor(
    snapshot: Snapshot,
    cow: CowOrigin,
    store: DiffStore,
    merged: Set<number>,
    hooks: { done: (job: MergeJob) => Promise<void>; failed: (job: MergeJob) => void },
  ) {
    this.snapshot = snapshot;
    this.cow = cow;
    this.store = store;
    const { table } = snapshot.origin;
    const candidates = new Set([...table.chunks(), ...snapshot.privateChunks.keys()]);
    this.chunks = [...candidates].filter((c) => table.resolve(c, snapshot).from === 'store').sort((a, b) => a - b);
    this.merged = new Set([...merged].filter((c) => this.chunks.includes(c)));
    this.onDone = hooks.done;
    this.onFail = hooks.failed;
  }

  /** Whether reads of `chunk` must come from the snapshot's copy (not merged yet). */
  pending(chunk: number): boolean {
    return !this.merged.has(chunk) && this.snapshot.origin.table.resolve(chunk, this.snapshot).from === 'store';
  }

  progress() {
    const seconds = (Date.now() - this.started) / 1000;
    return {
      snapshot: `${this.snapshot.origin.name}@${this.snapshot.name}`,
      state: this.state,
      merged: this.merged.size,
      total: this.chunks.length,
      bytesPerSecond: seconds > 0 ? Math.round(this.bytesSinceStart / seconds) : 0,
      ...(this.failure === undefined ? {} : { failedChunk: this.failure.chunk, error: this.failure.error }),
    };
  }

  /** Start (or retry) the background loop. */
  run(): Promise<void> {
    if (this.running !== undefined) return this.running;
    this.state = 'merging';
    this.failure = undefined;
    this.started = Date.now();
    this.bytesSinceStart = 0;
    this.running = this.loop().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async loop(): Promise<void> {
    let i = 0;
    while (i < this.chunks.length) {
      const run: number[] = [];
      for (; i < this.chunks.length && run.length < RUN_CHUNKS; i++) {
        const c = this.chunks[i] as number;
        const prev = run[run.length - 1];
        if (this.merged.has(c)) continue;
        if (prev !== undefined && c !== prev + 1) break;
        run.push(c);
      }
      if (run.length === 0) continue;
      try {
        await this.mergeRun(run);
      } catch (err) {
        this.state = 'failed';
        this.failure = { chunk: run[0] as number, error: errorMessage(err) };
        this.onFail(this);
        return;
      }
    }
    this.state = 'done';
    await this.onDone(this);
  }

  /** Merge one chunk now, for a client write (waits for a run in progress that holds it). */
  async mergeChunk(chunk: number): Promise<void> {
    while (this.pending(chunk)) {
      const busy = this.guard.inProgress(chunk);
      if (busy !== undefined) await busy;
      else await this.mergeRun([chunk]);
    }
  }

  private async mergeRun(run: number[]): Promise<void> {
    const todo = run.filter((c) => this.pending(c) && this.guard.inProgress(c) === undefined);
    if (todo.length === 0) return;
    const releases = todo.map((c) => this.guard.claim(c));
    try {
      const origin = this.snapshot.origin;
      // Consecutive chunks: one read per chunk from the store, one write to the origin.
      const first = todo[0] as number;
      const parts = await Promise.all(
        todo.map((c) => {
          const src = origin.table.resolve(c, this.snapshot);
          if (src.from !== 'store') throw new NbdsnapError('EIO', `chunk ${c} lost its store copy during the merge`);
          return this.store.readSlot(src.slot, origin.chunkLength(c));
        }),
      );
      const contiguous = todo.every((c, k) => c === first + k);
      if (contiguous) await this.cow.write(first * origin.chunkSize, Buffer.concat(parts), false);
      else await Promise.all(todo.map((c, k) => this.cow.write(c * origin.chunkSize, parts[k] as Buffer, false)));
      await this.cow.base.flush();
      const records = contiguous
        ? [{ type: 'MERGED' as const, snapshot: this.snapshot.id, chunk: first, count: todo.length }]
        : todo.map((c) => ({ type: 'MERGED' as const, snapshot: this.snapshot.id, chunk: c, count: 1 }));
      await this.store.commit(records);
      for (const c of todo) this.merged.add(c);
      this.bytesSinceStart += parts.reduce((n, p) => n + p.length, 0);
    } finally {
      for (const r of releases) r();
    }
  }
}

/** The origin export's top layer: passes through, except while a merge runs on the device. */
export class MergeLayer extends Layer {
  job: MergeJob | undefined;
  private storeReads = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(next: BlockDevice) {
    super(next);
  }

  /** Resolves once no read that started from the store is in flight (before freeing its slots). */
  idle(): Promise<void> {
    if (this.storeReads === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  override async read(offset: number, length: number): Promise<Buffer> {
    const job = this.job;
    if (job === undefined) return this.next.read(offset, length);
    const origin = job.snapshot.origin;
    const chunks = origin.chunksOf(offset, length);
    if (!chunks.some((c) => job.pending(c))) return this.next.read(offset, length);
    this.storeReads += 1;
    try {
      return await this.mixedRead(job, offset, length);
    } finally {
      this.storeReads -= 1;
      if (this.storeReads === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Chunk by chunk, from the snapshot's copy where the merge has not got to yet. */
  private async mixedRead(job: MergeJob, offset: number, length: number): Promise<Buffer> {
    const origin = job.snapshot.origin;
    const chunks = origin.chunksOf(offset, length);
    const out = Buffer.allocUnsafe(length);
    await Promise.all(
      chunks.map(async (c) => {
        const start = Math.max(offset, c * origin.chunkSize);
        const end = Math.min(offset + length, (c + 1) * origin.chunkSize);
        const src = origin.table.resolve(c, job.snapshot);
        const data =
          job.pending(c) && src.from === 'store'
            ? await job.store.readSlot(src.slot, end - start, start - c * origin.chunkSize)
            : await this.next.read(start, end - start);
        data.copy(out, start - offset);
      }),
    );
    return out;
  }

  override async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await this.mergeFirst(offset, data.length);
    return this.next.write(offset, data, fua);
  }

  override async writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    await this.mergeFirst(offset, length);
    return this.next.writeZeroes(offset, length, options);
  }

  override async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.mergeFirst(offset, length);
    return this.next.trim(offset, length, fua);
  }

  override async extents(offset: number, length: number) {
    const job = this.job;
    if (job === undefined) return this.next.extents(offset, length);
    // While merging, chunks still in the store are data; report the origin's view past them.
    const origin = job.snapshot.origin;
    const first = Math.floor(offset / origin.chunkSize);
    if (job.pending(first)) {
      const end = Math.min(origin.size, (first + 1) * origin.chunkSize, offset + length);
      return [{ length: end - offset, flags: 0 }];
    }
    return this.next.extents(offset, length);
  }

  private async mergeFirst(offset: number, length: number): Promise<void> {
    const job = this.job;
    if (job === undefined) return;
    for (const c of job.snapshot.origin.chunksOf(offset, length)) {
      if (job.pending(c)) await job.mergeChunk(c);
    }
  }
}
