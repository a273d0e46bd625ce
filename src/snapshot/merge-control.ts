/**
 * Starting, resuming and finishing merges, for the manager: `merge DEVICE@SNAP` (now, or
 * `--on-next-start`), resume after a restart, retry after a failure, and release of the
 * snapshot and its store space when the merge is done.
 */
import { errorMessage, NbdsnapError } from '../errors.ts';
import type { DiffStore } from '../store/store.ts';
import type { CowOrigin } from './cow-origin.ts';
import type { EventBus } from './events.ts';
import type { Copy } from './exception-table.ts';
import { MergeJob, type MergeLayer, mergeChunks } from './merge.ts';
import type { Snapshot } from './model.ts';

export interface MergeHost {
  store(): DiffStore;
  events: EventBus;
  layers(device: string): { cow: CowOrigin; merge: MergeLayer };
  /** Stop serving the snapshot's own export. */
  hide(snap: Snapshot): void;
  /** Resolves once no write to the snapshot's own export is in flight (it refuses new ones now). */
  quiesce(snap: Snapshot): Promise<void>;
  /** Record the snapshot deleted and free its space. */
  release(snap: Snapshot): Promise<void>;
  /** A copy the merge read failed its checksum: record it lost (damage.ts). */
  damaged(snap: Snapshot, chunk: number, copy: Copy): Promise<void>;
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

export class MergeControl {
  private readonly host: MergeHost;
  private readonly jobs = new Map<Snapshot, MergeJob>();

  constructor(host: MergeHost) {
    this.host = host;
  }

  /** `merge DEVICE@SNAP`: start now, schedule for the next start, or retry a failed merge. */
  async start(snap: Snapshot, onNextStart: boolean): Promise<MergeJob | undefined> {
    const existing = this.jobs.get(snap);
    if (existing !== undefined) {
      if (existing.state === 'failed') void existing.run();
      return existing;
    }
    const other = snap.origin.snapshots.find(
      (s) => s !== snap && (s.state === 'merging' || (s.mergeScheduled === true && s.state === 'valid')),
    );
    if (other !== undefined)
      throw new NbdsnapError('BUSY', `device ${snap.origin.name} already has a merge of ${label(other)}`);
    if (onNextStart) {
      refuseInvalid(snap);
      refuseDamaged(snap);
      if (this.host.store().transient)
        throw new NbdsnapError('BAD_ARGUMENT', 'a transient store keeps no snapshot until the next start');
      await this.host.store().commit([{ type: 'MERGE', snapshot: snap.id, deferred: true }]);
      snap.mergeScheduled = true;
      return undefined;
    }
    // Hold the origin's writes: none is half done (a copy made but not in the table yet) while
    // the chunks to merge are chosen, so replay finds the same chunks at the MERGE record.
    const { cow } = this.host.layers(snap.origin.name);
    await cow.hold();
    try {
      refuseInvalid(snap); // a write just drained may have invalidated it (store full)
      refuseDamaged(snap);
      // From here its own export refuses requests; wait for its writes in flight to end.
      snap.state = 'merging';
      snap.origin.refresh();
      try {
        await this.host.quiesce(snap);
        await this.host.store().commit([{ type: 'MERGE', snapshot: snap.id, deferred: false }]);
      } catch (err) {
        snap.state = 'valid';
        snap.origin.refresh();
        throw err;
      }
      return this.begin(snap, new Set(), mergeChunks(snap));
    } finally {
      cow.release();
    }
  }

  /** After replay: continue recorded merges, and start the ones scheduled for this start. */
  async resume(
    snaps: Iterable<Snapshot>,
    recorded: (s: Snapshot) => { merged: Set<number>; chunks: number[] } | undefined,
  ): Promise<void> {
    for (const snap of snaps) {
      if (snap.state === 'merging') {
        const r = recorded(snap);
        // The chunks replay found at the MERGE record: the ones chosen when the merge started.
        this.begin(snap, r?.merged ?? new Set(), r?.chunks ?? mergeChunks(snap));
      } else if (snap.mergeScheduled === true && snap.state === 'valid') {
        // Nothing is served yet: the table is the one the MERGE record will be replayed against.
        await this.host.store().commit([{ type: 'MERGE', snapshot: snap.id, deferred: false }]);
        this.begin(snap, new Set(), mergeChunks(snap));
      }
    }
  }

  private begin(snap: Snapshot, merged: Set<number>, chunks: number[]): MergeJob {
    snap.state = 'merging';
    snap.mergeScheduled = false;
    snap.origin.refresh();
    this.host.hide(snap);
    const { cow, merge } = this.host.layers(snap.origin.name);
    const failed = (j: MergeJob) => {
      const f = j.failure ?? { chunk: -1, error: 'unknown' };
      this.host.events.emit({ type: 'merge-failed', snapshot: label(snap), chunk: f.chunk, error: f.error });
    };
    const done = async (j: MergeJob) => {
      merge.job = undefined;
      await merge.idle();
      try {
        await this.host.release(snap);
      } catch (err) {
        // Every chunk is merged, the origin is right: only the release is left, tried again
        // by a retry (`merge` again) or at the next start.
        j.state = 'failed';
        j.failure = { chunk: -1, error: `releasing the merged snapshot: ${errorMessage(err)}` };
        failed(j);
        return;
      }
      this.jobs.delete(snap);
      this.host.events.emit({ type: 'merge-finished', snapshot: label(snap) });
    };
    const damaged = (chunk: number, copy: Copy) => this.host.damaged(snap, chunk, copy);
    const job = new MergeJob(snap, cow, this.host.store(), merged, { done, failed, damaged }, chunks);
    this.jobs.set(snap, job);
    merge.job = job;
    this.host.events.emit({ type: 'merge-started', snapshot: label(snap) });
    void job.run();
    return job;
  }

  status() {
    return [...this.jobs.values()].map((j) => j.progress());
  }

  /** Resolves once no merge is running (a failed one is left as it is). */
  async settle(): Promise<void> {
    await Promise.all([...this.jobs.values()].map((j) => j.settled()));
  }

  scheduled(all: Iterable<Snapshot>) {
    return [...all]
      .filter((s) => s.mergeScheduled === true && s.state === 'valid')
      .map((s) => ({ snapshot: label(s), state: 'scheduled for next start' }));
  }
}
