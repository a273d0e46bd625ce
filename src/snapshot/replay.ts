/**
 * Rebuilding snapshot state from the store's journal at start: each record is applied in order,
 * exactly as the running server applied it, so the state after replay is the state that was
 * committed before the stop or crash. Slots still referenced at the end are claimed in the store.
 */
import { CbtTracker } from '../cbt/tracker.ts';
import { NbdsnapError } from '../errors.ts';
import type { JournalRecord } from '../store/records.ts';
import { copyOf } from './exception-table.ts';
import { mergeChunks } from './merge.ts';
import { OriginState, type Snapshot } from './model.ts';

export interface ReplayedState {
  /** Devices known to the store, by id (including ones not configured now). */
  origins: Map<number, OriginState>;
  snapshots: Map<number, Snapshot>;
  nextSnapshotId: number;
  nextSeq: number;
  /**
   * Snapshots with a merge recorded and not finished: id -> deferred, the chunks merged, and
   * the chunks to merge (found at the MERGE record that began it, as when it began).
   */
  merges: Map<number, { deferred: boolean; merged: Set<number>; chunks: number[] | undefined }>;
  /** Change tracking per device id. */
  trackers: Map<number, CbtTracker>;
  /** Every snapshot ever taken, deleted ones too, per device id: name -> seq (for `--since`). */
  bookmarks: Map<number, Map<string, number>>;
}

export function replay(records: JournalRecord[], chunkSize: number): ReplayedState {
  const st: ReplayedState = {
    trackers: new Map(),
    bookmarks: new Map(),
    origins: new Map(),
    snapshots: new Map(),
    nextSnapshotId: 1,
    nextSeq: 1,
    merges: new Map(),
  };
  const noFree = () => {};
  for (const rec of records) {
    switch (rec.type) {
      case 'DEVICE':
        st.origins.set(rec.device, new OriginState(rec.device, rec.name, rec.size, chunkSize));
        break;
      case 'SNAPSHOT':
        for (const m of rec.members) {
          const origin = st.origins.get(m.device);
          if (origin === undefined)
            throw new NbdsnapError('CORRUPT', `journal: snapshot ${m.snapshot} of unknown device ${m.device}`);
          const snap: Snapshot = {
            id: m.snapshot,
            name: rec.name,
            origin,
            seq: m.seq,
            writable: m.writable,
            created: rec.created,
            state: 'valid',
            privateChunks: new Map(),
          };
          origin.snapshots.push(snap);
          origin.refresh();
          st.snapshots.set(m.snapshot, snap);
          const marks = st.bookmarks.get(m.device) ?? new Map<string, number>();
          marks.set(rec.name, m.seq);
          st.bookmarks.set(m.device, marks);
          st.nextSnapshotId = Math.max(st.nextSnapshotId, m.snapshot + 1);
          st.nextSeq = Math.max(st.nextSeq, m.seq + 1);
        }
        break;
      case 'DELETE':
      case 'INVALID': {
        const snap = st.snapshots.get(rec.snapshot);
        if (snap === undefined) break;
        snap.privateChunks.clear();
        if (rec.type === 'DELETE') {
          snap.origin.snapshots.splice(snap.origin.snapshots.indexOf(snap), 1);
          st.snapshots.delete(rec.snapshot);
          st.merges.delete(rec.snapshot);
        } else {
          snap.state = 'invalid';
          snap.reason = rec.reason;
          snap.mergeScheduled = false; // an invalid snapshot is never merged
        }
        snap.origin.refresh();
        snap.origin.table.prune(snap.origin.readers, noFree);
        break;
      }
      case 'EXCEPTION':
        st.origins.get(rec.device)?.table.add(rec.chunk, rec.seq, rec.slot, rec.crc);
        break;
      case 'PRIVATE':
        // A later PRIVATE of the same chunk replaces it (redirect-on-write); the old slot is free.
        st.snapshots.get(rec.snapshot)?.privateChunks.set(rec.chunk, copyOf(rec.slot, rec.crc));
        break;
      case 'LOST': {
        const origin = st.origins.get(rec.device);
        origin?.table.lose(rec.chunk, rec.slot, origin.snapshots);
        break;
      }
      case 'MERGE': {
        const snap = st.snapshots.get(rec.snapshot);
        if (snap === undefined) break;
        const before = st.merges.get(rec.snapshot);
        st.merges.set(rec.snapshot, {
          deferred: rec.deferred,
          merged: before?.merged ?? new Set(),
          chunks: before?.chunks ?? (rec.deferred ? undefined : mergeChunks(snap)),
        });
        if (rec.deferred) snap.mergeScheduled = true;
        else {
          snap.mergeScheduled = false;
          snap.state = 'merging';
          snap.origin.refresh();
        }
        break;
      }
      case 'MERGED': {
        const m = st.merges.get(rec.snapshot);
        if (m !== undefined) for (let c = rec.chunk; c < rec.chunk + rec.count; c++) m.merged.add(c);
        break;
      }
      case 'CBT_GEN': {
        const origin = st.origins.get(rec.device);
        if (origin !== undefined)
          st.trackers.set(rec.device, new CbtTracker(origin.size, rec.blockSize, rec.generation));
        st.bookmarks.delete(rec.device); // a new generation: earlier points have no history
        break;
      }
      case 'CBT':
        st.trackers.get(rec.device)?.mark(rec.era, rec.block, rec.count);
        break;
      case 'COMMIT':
        break;
    }
  }
  return st;
}

/** Every slot the replayed state still uses. */
export function* usedSlots(st: ReplayedState): IterableIterator<number> {
  for (const origin of st.origins.values()) for (const [, v] of origin.table.entries()) yield v.slot;
  for (const snap of st.snapshots.values()) for (const own of snap.privateChunks.values()) yield own.slot;
}
