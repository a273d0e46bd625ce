/**
 * The snapshot catalog: everything the store's journal says, in memory. The devices the store
 * knows (each an `OriginState`: its exception table and snapshots), every snapshot, the merges
 * recorded and not finished, change tracking (trackers and snapshot points), and the next
 * snapshot id and sequence number.
 *
 * Only `apply` (transition.ts) changes it, one journal record at a time, both at start (replay)
 * and at run time (after the record is durable, recorder.ts); everything else reads it. So the
 * state after a restart is the state the running server had, by construction.
 */
import type { CbtTracker } from '../cbt/tracker.ts';
import type { OriginState, Snapshot } from './model.ts';

/** A merge recorded and not finished (a MERGE record, and the MERGED records after it). */
export interface MergeEntry {
  /** Only scheduled (`merge --on-next-start`), not begun. */
  deferred: boolean;
  /** Chunks recorded merged. */
  merged: Set<number>;
  /** The chunks to merge, fixed when the merge began (at its MERGE record); none while deferred. */
  chunks: number[] | undefined;
}

export class Catalog {
  readonly chunkSize: number;
  /** Devices known to the store, by id (served now or not). */
  readonly origins = new Map<number, OriginState>();
  readonly snapshots = new Map<number, Snapshot>();
  /** Merges recorded and not finished, by snapshot id. */
  readonly merges = new Map<number, MergeEntry>();
  /** Change tracking per device id. */
  readonly trackers = new Map<number, CbtTracker>();
  /** Every snapshot point of the current tracking generation, deleted ones too, per device id: name -> seq. */
  readonly bookmarks = new Map<number, Map<string, number>>();
  nextSnapshotId = 1;
  /** The sequence number the next snapshot gets (also the change-tracking era of a write made now). */
  nextSeq = 1;

  constructor(chunkSize: number) {
    this.chunkSize = chunkSize;
  }

  /** The device known under `name`, if any. */
  originNamed(name: string): OriginState | undefined {
    for (const o of this.origins.values()) if (o.name === name) return o;
    return undefined;
  }

  /** The id a newly served device gets. */
  nextDeviceId(): number {
    return Math.max(0, ...this.origins.keys()) + 1;
  }

  /** Every snapshot, oldest first. */
  bySeq(): Snapshot[] {
    return [...this.snapshots.values()].sort((a, b) => a.seq - b.seq);
  }

  /** Every store slot the state references (claimed in the store after a replay). */
  *usedSlots(): IterableIterator<number> {
    for (const origin of this.origins.values()) for (const [, v] of origin.table.entries()) yield v.slot;
    for (const snap of this.snapshots.values()) for (const own of snap.privateChunks.values()) yield own.slot;
  }
}
