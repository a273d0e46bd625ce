/**
 * Merge: roll an origin back to one of its snapshots, online (LVM's snapshot-merge).
 *
 * From the moment a merge starts the origin export reads exactly as the snapshot: `MergeLayer`
 * (on top of the COW layer) sends reads of chunks not yet merged to the snapshot's copies in
 * the store. In the background `MergeJob` copies those chunks back, in runs of consecutive
 * chunks: read the run from the store, write it to the origin *through the COW layer* (so every
 * other snapshot first preserves what is about to be overwritten), flush the origin, then record
 * the run as merged, durably, before the next run. Each chunk read from the store is verified
 * against its checksum: a damaged copy fails the merge, naming the chunk, and is never written
 * into the origin (reads of it through the origin export answer EIO). A crash resumes from the records; copying a
 * run again whose record was lost is harmless, since no client write reached it (below).
 *
 * A client write to a chunk not yet merged first merges that chunk (waiting for the run in
 * progress if it is one), so the write lands on merged data and the merge never overwrites it.
 *
 * The chunks to merge are fixed at the MERGE record (`mergeChunks`, called by the catalog's
 * transition when it applies that record: at run time with the origin's writes held, and at
 * replay after a restart, so the same set).
 * They must not be recomputed from the exception table as it is later, because a client write
 * during the merge to a chunk the snapshot still shared with the origin copies it for a newer
 * snapshot, and that copy (the snapshot's old data) resolves for the merged snapshot too:
 * merging it would roll back the client's write.
 */
import { type BlockDevice, Layer, type ZeroOptions } from '../block/device.ts';
import { errorMessage, NbdsnapError } from '../errors.ts';
import type { Extent } from '../nbd-protocol/index.ts';
import type { JournalRecord } from '../store/records.ts';
import type { DiffStore } from '../store/store.ts';
import { readVerified } from '../store/verify.ts';
import { ChunkGuard } from './chunk-guard.ts';
import type { CowOrigin } from './cow-origin.ts';
import { damagedCopyError } from './damage.ts';
import type { Copy } from './exception-table.ts';
import type { Snapshot } from './model.ts';
import { TokenBucket } from './rate-limit.ts';

/** Chunks merged per run (bounded so client writes never wait long). */
const RUN_CHUNKS = 16;

export type MergeState = 'merging' | 'failed' | 'done';

/** What a merge job needs from the server. */
export interface MergeHooks {
  /** Every chunk is merged: release the snapshot. */
  done(job: MergeJob): Promise<void>;
  /** The job stopped at `job.failure`. */
  failed(job: MergeJob): void;
  /** Commit records (MERGED) durably, then apply them to the catalog (which adds to `merged`). */
  record(records: JournalRecord[]): Promise<unknown>;
  /** A copy the merge read failed its checksum: record it lost (damage.ts). */
  damaged(snapshot: Snapshot, chunk: number, copy: Copy): Promise<void>;
}

/** A merge as the catalog holds it: the chunks to merge and those recorded merged. */
export interface MergeProgress {
  chunks: readonly number[];
  /** The catalog's own set: it grows as MERGED records are applied. */
  merged: Set<number>;
}

/**
 * The chunks a merge of `snapshot` has to copy back now: those it reads from the store, in
 * order. Walks only those (the exception table's ordered runs and its private chunks).
 */
export function mergeChunks(snapshot: Snapshot): number[] {
  const out: number[] = [];
  snapshot.origin.table.storedRuns(snapshot, 0, Number.POSITIVE_INFINITY, (first, end) => {
    for (let c = first; c < end; c++) out.push(c);
  });
  return out;
}

/**
 * A chunk's store copy, whole and verified: a damaged copy is never written into the origin.
 * A mismatch is recorded (`damaged`) before the EIO.
 */
async function readCopy(
  store: DiffStore,
  chunk: number,
  copy: Copy,
  length: number,
  damaged: (chunk: number, copy: Copy) => Promise<void>,
): Promise<Buffer> {
  const data = copy.lost ? undefined : await readVerified(store, copy.slot, copy.crc, length);
  if (data === undefined) throw await damagedCopyError('', chunk, copy, damaged);
  return data;
}

/** The chunk whose merge threw each error (the error itself is passed on unchanged). */
const failedChunk = new WeakMap<object, number>();

/** Runs `work` for `chunk`, noting the chunk against what it throws. */
async function forChunk<T>(chunk: number, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (typeof err === 'object' && err !== null && !failedChunk.has(err)) failedChunk.set(err, chunk);
    throw err;
  }
}

export class MergeJob {
  readonly snapshot: Snapshot;
  state: MergeState = 'merging';
  failure: { chunk: number; error: string } | undefined;
  /** Chunks the snapshot held in the store when the merge started, ascending: what is copied back. */
  readonly chunks: number[];
  private readonly chunkSet: Set<number>;
  readonly merged: Set<number>;
  private readonly guard = new ChunkGuard();
  private readonly cow: CowOrigin;
  readonly store: DiffStore;
  private started = Date.now();
  private bytesSinceStart = 0;
  private running: Promise<void> | undefined;
  private readonly hooks: MergeHooks;
  /** The rate limit of the background runs (client-write merges are not held back by it). */
  private readonly bucket: TokenBucket;
  /** Ends the sleep between runs early (the speed changed). */
  private wake: (() => void) | undefined;

  /** `progress`: the chunks to merge, fixed at the MERGE record (see `mergeChunks`), and those merged. */
  constructor(
    snapshot: Snapshot,
    cow: CowOrigin,
    store: DiffStore,
    progress: MergeProgress,
    hooks: MergeHooks,
    speed = 0,
  ) {
    this.snapshot = snapshot;
    this.bucket = new TokenBucket(speed, () => performance.now());
    this.cow = cow;
    this.store = store;
    this.chunks = [...progress.chunks].sort((a, b) => a - b);
    this.chunkSet = new Set(this.chunks);
    this.merged = progress.merged;
    this.hooks = hooks;
  }

  /** Records a copy found damaged (a LOST record, through the hooks). */
  readonly damaged = (chunk: number, copy: Copy): Promise<void> => this.hooks.damaged(this.snapshot, chunk, copy);

  /** Whether reads of `chunk` must come from the snapshot's copy (not merged yet). */
  pending(chunk: number): boolean {
    return this.chunkSet.has(chunk) && !this.merged.has(chunk);
  }

  /** The first chunk from `chunk` on that is still to merge, if any. */
  nextPending(chunk: number): number | undefined {
    let lo = 0;
    let hi = this.chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.chunks[mid] as number) < chunk) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.chunks.length; i++) {
      const c = this.chunks[i] as number;
      if (!this.merged.has(c)) return c;
    }
    return undefined;
  }

  /** The rate limit in bytes per second (0: none), as qemu's block-job speed. */
  get speed(): number {
    return this.bucket.speed;
  }

  /** Change the rate limit; applies to the next run (a sleep between runs ends early). */
  set speed(bytesPerSecond: number) {
    this.bucket.speed = bytesPerSecond;
    this.wake?.();
  }

  progress() {
    const seconds = (Date.now() - this.started) / 1000;
    return {
      snapshot: `${this.snapshot.origin.name}@${this.snapshot.name}`,
      state: this.state,
      merged: this.merged.size,
      total: this.chunks.length,
      bytesPerSecond: seconds > 0 ? Math.round(this.bytesSinceStart / seconds) : 0,
      speed: this.bucket.speed,
      ...(this.failure === undefined ? {} : { failedChunk: this.failure.chunk, error: this.failure.error }),
    };
  }

  /** Resolves once the background loop is not running (done, failed, or never started). */
  settled(): Promise<void> {
    return this.running ?? Promise.resolve();
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
    // Passes until nothing is pending: a chunk a client write was merging when a pass reached
    // it is skipped by that pass, and if that merge failed the next pass does it (or fails).
    for (;;) {
      const todo = this.chunks.filter((c) => this.pending(c));
      if (todo.length === 0) break;
      const busy: Promise<void>[] = [];
      for (let i = 0; i < todo.length; ) {
        const run: number[] = [];
        for (; i < todo.length && run.length < RUN_CHUNKS; i++) {
          const c = todo[i] as number;
          const prev = run[run.length - 1];
          if (prev !== undefined && c !== prev + 1) break;
          run.push(c);
        }
        try {
          await this.pace();
          await this.mergeRun(run);
        } catch (err) {
          this.state = 'failed';
          this.failure = {
            chunk: (typeof err === 'object' && err !== null ? failedChunk.get(err) : undefined) ?? (run[0] as number),
            error: errorMessage(err),
          };
          this.hooks.failed(this);
          return;
        }
        for (const c of run) {
          const p = this.guard.inProgress(c);
          if (p !== undefined) busy.push(p);
        }
      }
      await Promise.all(busy);
    }
    this.state = 'done';
    await this.hooks.done(this);
  }

  /** Sleeps between runs while the rate limit says so (woken early by a change of speed). */
  private async pace(): Promise<void> {
    for (let ms = this.bucket.delay(); ms > 0; ms = this.bucket.delay()) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, ms);
        timer.unref();
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
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
        todo.map((c) =>
          forChunk(c, async () => {
            const src = origin.table.resolve(c, this.snapshot);
            if (src.from !== 'store') throw new NbdsnapError('EIO', `chunk ${c} lost its store copy during the merge`);
            return readCopy(this.store, c, src.copy, origin.chunkLength(c), this.damaged);
          }),
        ),
      );
      const contiguous = todo.every((c, k) => c === first + k);
      const one = (k: number) =>
        forChunk(todo[k] as number, () =>
          this.cow.write((todo[k] as number) * origin.chunkSize, parts[k] as Buffer, false),
        );
      try {
        if (contiguous) await this.cow.write(first * origin.chunkSize, Buffer.concat(parts), false);
        else await Promise.all(todo.map((_, k) => one(k)));
      } catch {
        // Again chunk by chunk, in order: the error then names the chunk that fails (writing
        // the others again is harmless: no client write reaches a chunk being merged).
        for (let k = 0; k < todo.length; k++) await one(k);
      }
      await forChunk(first, () => this.cow.base.flush());
      const records = contiguous
        ? [{ type: 'MERGED' as const, snapshot: this.snapshot.id, chunk: first, count: todo.length }]
        : todo.map((c) => ({ type: 'MERGED' as const, snapshot: this.snapshot.id, chunk: c, count: 1 }));
      await forChunk(first, () => this.hooks.record(records));
      const bytes = parts.reduce((n, p) => n + p.length, 0);
      this.bytesSinceStart += bytes;
      this.bucket.take(bytes);
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
        if (job.pending(c) && src.from === 'store') {
          const data = await readCopy(job.store, c, src.copy, origin.chunkLength(c), job.damaged);
          const at = start - c * origin.chunkSize;
          data.copy(out, start - offset, at, at + end - start);
        } else (await this.next.read(start, end - start)).copy(out, start - offset);
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
    // While merging, chunks still in the store are data; elsewhere the origin's own view, but
    // only up to the next chunk still to merge (the origin may have a hole where the snapshot
    // has data: reporting it would let a client skip that data as zeroes).
    const origin = job.snapshot.origin;
    const cs = origin.chunkSize;
    const first = Math.floor(offset / cs);
    const end = Math.min(origin.size, offset + length);
    if (job.pending(first)) return [{ length: Math.min(end, (first + 1) * cs) - offset, flags: 0 }];
    const next = job.nextPending(first + 1);
    const stop = next === undefined ? end : Math.min(end, next * cs);
    const out: Extent[] = [];
    let covered = 0;
    for (const e of await this.next.extents(offset, stop - offset)) {
      const take = Math.min(e.length, stop - offset - covered);
      if (take <= 0) break;
      out.push({ length: take, flags: e.flags });
      covered += take;
    }
    return out;
  }

  private async mergeFirst(offset: number, length: number): Promise<void> {
    const job = this.job;
    if (job === undefined) return;
    for (const c of job.snapshot.origin.chunksOf(offset, length)) {
      if (job.pending(c)) await job.mergeChunk(c);
    }
  }
}
