/**
 * Starting, resuming and finishing merges, for the manager: `merge DEVICE@SNAP` (now, or
 * `--on-next-start`), resume after a restart, retry after a failure, and release of the
 * snapshot and its store space when the merge is done.
 */
import { NbdsnapError } from '../errors.ts';
import type { DiffStore } from '../store/store.ts';
import type { CowOrigin } from './cow-origin.ts';
import type { EventBus } from './events.ts';
import { MergeJob, type MergeLayer } from './merge.ts';
import type { Snapshot } from './model.ts';

export interface MergeHost {
  store(): DiffStore;
  events: EventBus;
  layers(device: string): { cow: CowOrigin; merge: MergeLayer };
  /** Stop serving the snapshot's own export. */
  hide(snap: Snapshot): void;
  /** Record the snapshot deleted and free its space. */
  release(snap: Snapshot): Promise<void>;
}

const label = (s: Snapshot): string => `${s.origin.name}@${s.name}`;

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
    if (snap.state === 'invalid')
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        `snapshot ${label(snap)} is invalid (${snap.reason ?? ''}); it cannot be merged`,
      );
    const other = snap.origin.snapshots.find((s) => s !== snap && (s.state === 'merging' || s.mergeScheduled === true));
    if (other !== undefined)
      throw new NbdsnapError('BUSY', `device ${snap.origin.name} already has a merge of ${label(other)}`);
    if (onNextStart) {
      await this.host.store().commit([{ type: 'MERGE', snapshot: snap.id, deferred: true }]);
      snap.mergeScheduled = true;
      return undefined;
    }
    await this.host.store().commit([{ type: 'MERGE', snapshot: snap.id, deferred: false }]);
    return this.begin(snap, new Set());
  }

  /** After replay: continue recorded merges, and start the ones scheduled for this start. */
  async resume(snaps: Iterable<Snapshot>, merged: (s: Snapshot) => Set<number>): Promise<void> {
    for (const snap of snaps) {
      if (snap.state === 'merging') this.begin(snap, merged(snap));
      else if (snap.mergeScheduled === true && snap.state === 'valid') {
        await this.host.store().commit([{ type: 'MERGE', snapshot: snap.id, deferred: false }]);
        this.begin(snap, new Set());
      }
    }
  }

  private begin(snap: Snapshot, merged: Set<number>): MergeJob {
    snap.state = 'merging';
    snap.mergeScheduled = false;
    snap.origin.refresh();
    this.host.hide(snap);
    const { cow, merge } = this.host.layers(snap.origin.name);
    const job = new MergeJob(snap, cow, this.host.store(), merged, {
      done: async (j) => {
        merge.job = undefined;
        await merge.idle();
        this.jobs.delete(snap);
        await this.host.release(snap);
        this.host.events.emit({ type: 'merge-finished', snapshot: label(snap) });
        void j;
      },
      failed: (j) => {
        const f = j.failure ?? { chunk: -1, error: 'unknown' };
        this.host.events.emit({ type: 'merge-failed', snapshot: label(snap), chunk: f.chunk, error: f.error });
      },
    });
    this.jobs.set(snap, job);
    merge.job = job;
    this.host.events.emit({ type: 'merge-started', snapshot: label(snap) });
    void job.run();
    return job;
  }

  status() {
    return [...this.jobs.values()].map((j) => j.progress());
  }

  scheduled(all: Iterable<Snapshot>) {
    return [...all]
      .filter((s) => s.mergeScheduled === true)
      .map((s) => ({ snapshot: label(s), state: 'scheduled for next start' }));
  }
}
