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
import { errorMessage } from '../errors.ts';
import type { JournalRecord } from '../store/records.ts';
import type { DiffStore } from '../store/store.ts';
import { ChunkGuard } from './chunk-guard.ts';
import type { CowOrigin } from './cow-origin.ts';
import type { Copy } from './exception-table.ts';
import { failedChunk, forChunk, readRun } from './merge-read.ts';
import type { Snapshot } from './model.ts';
import { TokenBucket } from './rate-limit.ts';

/**
 * Bytes merged per run: each run costs two syncs (the origin, then the MERGED record), so runs
 * are large; bounded so a client write to a chunk of the run in progress never waits long, and
 * so the memory of the two runs held (one written, the next read ahead) stays small.
 */
const RUN_BYTES = 8 * 1024 * 1024;
/** And chunks per run (small chunks): one claim each, all waited for by a write to any of them. */
const RUN_CHUNKS = 128;

/** A run claimed and being read from the store (`parts`), not yet written to the origin. */
interface PreparedRun {
  chunks: number[];
  parts: Promise<Buffer[]>;
  release(): void;
}

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
  /** Set at shutdown: the loop ends before its next run (the merge resumes at the next start). */
  private stopping = false;

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

  /** Shutdown: end the background loop before its next run; resolves once it has ended. */
  stop(): Promise<void> {
    this.stopping = true;
    this.wake?.();
    return this.settled();
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
      let ahead: PreparedRun | undefined;
      let i = 0;
      const cut = (): number[] | undefined => {
        const run = this.runFrom(todo, i);
        i += run.length;
        return run.length === 0 ? undefined : run;
      };
      for (let run = cut(); run !== undefined; ) {
        let next: number[] | undefined;
        if (this.stopping) {
          if (ahead !== undefined) await dropUnmerged(ahead);
          await Promise.all(busy);
          return;
        }
        try {
          if (ahead === undefined) await this.pace();
          const cur = ahead ?? this.prepare(run);
          ahead = undefined;
          // No limit: read the next run from the store while this one is written and synced.
          next = cut();
          if (next !== undefined && this.bucket.speed === 0) ahead = this.prepare(next);
          await this.commit(cur);
        } catch (err) {
          if (ahead !== undefined) await dropUnmerged(ahead);
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
        run = next;
      }
      await Promise.all(busy);
    }
    this.state = 'done';
    await this.hooks.done(this);
  }

  /**
   * The run of `todo` (ascending) from index `i`: consecutive chunks, at most RUN_BYTES, and with
   * a rate limit about a thirtieth of a second's worth (short pauses, spread evenly, so client
   * I/O meanwhile sees small interruptions rather than long bursts).
   */
  private runFrom(todo: readonly number[], i: number): number[] {
    const cs = this.snapshot.origin.chunkSize;
    const speed = this.bucket.speed;
    const bytes = speed === 0 ? RUN_BYTES : Math.min(RUN_BYTES, Math.floor(speed / 30));
    const most = Math.max(1, Math.min(RUN_CHUNKS, Math.floor(bytes / cs)));
    const run: number[] = [];
    for (; i < todo.length && run.length < most; i++) {
      const c = todo[i] as number;
      const prev = run[run.length - 1];
      if (prev !== undefined && c !== prev + 1) break;
      run.push(c);
    }
    return run;
  }

  /** Sleeps between runs while the rate limit says so (woken early by a change of speed). */
  private async pace(): Promise<void> {
    for (let ms = this.bucket.delay(); ms > 0 && !this.stopping; ms = this.bucket.delay()) {
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

  private mergeRun(run: number[]): Promise<void> {
    return this.commit(this.prepare(run));
  }

  /** Claim the chunks of `run` still to merge (and not merging for a write) and start reading them. */
  private prepare(run: number[]): PreparedRun {
    const chunks = run.filter((c) => this.pending(c) && this.guard.inProgress(c) === undefined);
    const releases = chunks.map((c) => this.guard.claim(c));
    const parts = chunks.length === 0 ? Promise.resolve([]) : readRun(this.store, this.snapshot, chunks, this.damaged);
    parts.catch(() => undefined); // awaited by `commit` (or by the loop, after a failure)
    return {
      chunks,
      parts,
      release: () => {
        for (const r of releases) r();
      },
    };
  }

  /** Write a prepared run to the origin, sync it, then record it MERGED; releases its chunks. */
  private async commit(p: PreparedRun): Promise<void> {
    try {
      const todo = p.chunks;
      if (todo.length === 0) return;
      const parts = await p.parts;
      const origin = this.snapshot.origin;
      const cs = origin.chunkSize;
      const first = todo[0] as number;
      const contiguous = todo.every((c, k) => c === first + k);
      // Chunk k at k * chunkSize (only the device's last chunk is short, and it comes last).
      const data = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
      const one = (k: number) =>
        forChunk(todo[k] as number, () =>
          this.cow.write(
            (todo[k] as number) * cs,
            data.subarray(k * cs, k * cs + origin.chunkLength(todo[k] as number)),
            false,
          ),
        );
      try {
        if (contiguous) await this.cow.write(first * cs, data, false);
        else await Promise.all(todo.map((_, k) => one(k)));
      } catch {
        // Again chunk by chunk, in order: the error then names the chunk that fails (writing
        // the others again is harmless: no client write reaches a chunk being merged).
        for (let k = 0; k < todo.length; k++) await one(k);
      }
      // Durable in the origin before the record that says so.
      await forChunk(first, () => this.cow.base.flush());
      const records = contiguous
        ? [{ type: 'MERGED' as const, snapshot: this.snapshot.id, chunk: first, count: todo.length }]
        : todo.map((c) => ({ type: 'MERGED' as const, snapshot: this.snapshot.id, chunk: c, count: 1 }));
      await forChunk(first, () => this.hooks.record(records));
      this.bytesSinceStart += data.length;
      this.bucket.take(data.length);
    } finally {
      p.release();
    }
  }
}

/**
 * A run read ahead and then not merged (a stop, or the run before it failed): wait for its reads
 * before releasing its chunks. Its own read failure is not reported: nothing of it was written,
 * and the run is read again when the merge resumes.
 */
async function dropUnmerged(run: PreparedRun): Promise<void> {
  await run.parts.catch(() => undefined);
  run.release();
}
