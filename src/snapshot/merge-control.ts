/**
 * Starting, resuming and finishing merges: `merge DEVICE@SNAP` (now, or `--on-next-start`),
 * resume after a restart, retry after a failure, and release of the snapshot and its store space
 * when the merge is done. The merge's state (scheduled, begun, chunks to merge, chunks merged)
 * is the catalog's, changed only by the MERGE, MERGED and DELETE records (transition.ts); the
 * jobs here are the work in progress.
 */
import { errorMessage, NbdsnapError } from '../errors.ts';
import type { JournalRecord } from '../store/records.ts';
import type { DiffStore } from '../store/store.ts';
import type { Catalog } from './catalog.ts';
import type { DamageLog } from './damage.ts';
import type { DeviceStack } from './device-stack.ts';
import type { EventBus } from './events.ts';
import type { Copy } from './exception-table.ts';
import { type MergeHooks, MergeJob, mergeChunks } from './merge.ts';
import type { Snapshot } from './model.ts';
import type { ExportPublisher } from './publisher.ts';
import { checkSpeed } from './rate-limit.ts';
import type { Recorder } from './recorder.ts';
import { releaseRecords } from './release.ts';
import type { Serial } from './serial.ts';

export interface MergeParts {
  catalog: Catalog;
  recorder: Recorder;
  store: DiffStore | undefined;
  events: EventBus;
  stacks: ReadonlyMap<string, DeviceStack>;
  publisher: ExportPublisher;
  /** The control commands' queue: releasing a merged snapshot is one of them. */
  serial: Serial;
  /** Records a copy found damaged (damage.ts). */
  damage: DamageLog;
  /**
   * serve's --merge-speed: the rate limit (bytes per second, 0 none) of a merge started without
   * one, and of every merge resumed or begun at a start (a speed is not recorded in the journal).
   */
  defaultSpeed?: number | undefined;
  /** serve's --cbt-keep-deleted: a finished merge forgets the points beyond it, as a delete does. */
  keepDeleted?: number | undefined;
}

const label = (s: Snapshot): string => `${s.origin.name}@${s.name}`;

function refuseInvalid(snap: Snapshot): void {
  if (snap.state === 'invalid')
    throw new NbdsnapError(
      'BAD_ARGUMENT',
      `snapshot ${label(snap)} is invalid (${snap.reason ?? ''}); it cannot be merged`,
    );
}

/** A merge of a snapshot with chunks known lost would roll the origin back to unreadable data. */
function refuseDamaged(snap: Snapshot): void {
  const lost = mergeChunks(snap).filter((c) => {
    const src = snap.origin.table.resolve(c, snap);
    return src.from === 'store' && src.copy.lost;
  });
  if (lost.length > 0)
    throw new NbdsnapError(
      'CORRUPT',
      `snapshot ${label(snap)} has damaged chunks (${lost.slice(0, 8).join(', ')}); it cannot be merged`,
    );
}

export class MergeControl implements MergeHooks {
  private readonly parts: MergeParts;
  private readonly jobs = new Map<Snapshot, MergeJob>();

  constructor(parts: MergeParts) {
    this.parts = parts;
  }

  private store(): DiffStore {
    const store = this.parts.store;
    if (store === undefined) throw new NbdsnapError('BAD_CONFIG', 'no difference store: start serve with --store PATH');
    return store;
  }

  private stack(snap: Snapshot): DeviceStack {
    const stack = this.parts.stacks.get(snap.origin.name);
    if (stack === undefined) throw new NbdsnapError('NOT_FOUND', `device ${snap.origin.name} is not served`);
    return stack;
  }

  /**
   * `merge DEVICE@SNAP`: start now, schedule for the next start, or retry a failed merge.
   * `speed` (bytes per second, 0 none): the rate limit, also changed on a merge already running.
   */
  async start(snap: Snapshot, onNextStart: boolean, speed?: number): Promise<MergeJob | undefined> {
    if (speed !== undefined) checkSpeed(speed);
    const existing = this.jobs.get(snap);
    if (existing !== undefined) {
      if (speed !== undefined) existing.speed = speed;
      if (existing.state === 'failed') void existing.run();
      return existing;
    }
    if (onNextStart && speed !== undefined)
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        "a merge at the next start runs at serve's --merge-speed (a speed is not recorded)",
      );
    const other = snap.origin.snapshots.find(
      (s) => s !== snap && (s.state === 'merging' || (s.mergeScheduled === true && s.state === 'valid')),
    );
    if (other !== undefined)
      throw new NbdsnapError('BUSY', `device ${snap.origin.name} already has a merge of ${label(other)}`);
    if (onNextStart) {
      refuseInvalid(snap);
      refuseDamaged(snap);
      if (this.store().transient)
        throw new NbdsnapError('BAD_ARGUMENT', 'a transient store keeps no snapshot until the next start');
      await this.parts.recorder.record([{ type: 'MERGE', snapshot: snap.id, deferred: true }]);
      return undefined;
    }
    // Hold the origin's writes: none is half done (a copy made but not in the catalog yet) when
    // the MERGE record fixes the chunks to merge.
    const { cow } = this.stack(snap);
    await cow.hold();
    try {
      refuseInvalid(snap); // a write just drained may have invalidated it (store full)
      refuseDamaged(snap);
      // From here its own export refuses requests; wait for its writes in flight to end (their
      // private chunks are then in the catalog, so in the merge).
      await this.parts.publisher.fence(snap);
      try {
        await this.parts.recorder.record([{ type: 'MERGE', snapshot: snap.id, deferred: false }]);
      } catch (err) {
        this.parts.publisher.unfence(snap);
        throw err;
      }
      return this.begin(snap, speed);
    } finally {
      cow.release();
    }
  }

  /** `merge speed DEVICE@SNAP SPEED`: change the rate limit of a merge in progress. */
  setSpeed(snap: Snapshot, speed: number): MergeJob {
    checkSpeed(speed);
    const job = this.jobs.get(snap);
    if (job === undefined) throw new NbdsnapError('NOT_FOUND', `no merge of ${label(snap)} in progress`);
    job.speed = speed;
    return job;
  }

  /** After replay: continue recorded merges, and start the ones scheduled for this start. */
  async resume(snaps: Iterable<Snapshot>): Promise<void> {
    for (const snap of snaps) {
      if (snap.state === 'merging') this.begin(snap);
      else if (snap.mergeScheduled === true && snap.state === 'valid') {
        await this.parts.recorder.record([{ type: 'MERGE', snapshot: snap.id, deferred: false }]);
        this.begin(snap);
      }
    }
  }

  /** A job for a snapshot whose MERGE record is applied (the catalog holds its chunks). */
  private begin(snap: Snapshot, speed = this.parts.defaultSpeed ?? 0): MergeJob {
    const entry = this.parts.catalog.merges.get(snap.id);
    const progress = { merged: entry?.merged ?? new Set<number>(), chunks: entry?.chunks ?? mergeChunks(snap) };
    const { cow, merge } = this.stack(snap);
    const job = new MergeJob(snap, cow, this.store(), progress, this, speed);
    this.jobs.set(snap, job);
    merge.job = job;
    this.parts.events.emit({ type: 'merge-started', snapshot: label(snap) });
    void job.run();
    return job;
  }

  record(records: JournalRecord[]): Promise<unknown> {
    return this.parts.recorder.record(records);
  }

  damaged(snap: Snapshot, chunk: number, copy: Copy): Promise<void> {
    return this.parts.damage.record(snap.origin, chunk, copy);
  }

  failed(job: MergeJob): void {
    const f = job.failure ?? { chunk: -1, error: 'unknown' };
    this.parts.events.emit({ type: 'merge-failed', snapshot: label(job.snapshot), chunk: f.chunk, error: f.error });
  }

  async done(job: MergeJob): Promise<void> {
    const snap = job.snapshot;
    const { merge } = this.stack(snap);
    merge.job = undefined;
    await merge.idle();
    try {
      const { catalog, keepDeleted } = this.parts;
      await this.parts.serial.run(() => this.parts.recorder.record(releaseRecords(catalog, snap, keepDeleted ?? 1)));
    } catch (err) {
      // Every chunk is merged, the origin is right: only the release is left, tried again by a
      // retry (`merge` again) or at the next start.
      job.state = 'failed';
      job.failure = { chunk: -1, error: `releasing the merged snapshot: ${errorMessage(err)}` };
      this.failed(job);
      return;
    }
    this.jobs.delete(snap);
    this.parts.events.emit({ type: 'merge-finished', snapshot: label(snap) });
  }

  status() {
    return [...this.jobs.values()].map((j) => j.progress());
  }

  /** Shutdown: end every merge loop before its next run (each resumes at the next start). */
  async stopAll(): Promise<void> {
    await Promise.all([...this.jobs.values()].map((j) => j.stop()));
  }

  /** Resolves once no merge is running (a failed one is left as it is). */
  async settle(): Promise<void> {
    await Promise.all([...this.jobs.values()].map((j) => j.settled()));
  }

  scheduled() {
    return this.parts.catalog
      .bySeq()
      .filter((s) => s.mergeScheduled === true && s.state === 'valid')
      .map((s) => ({ snapshot: label(s), state: 'scheduled for next start' }));
  }
}
