/**
 * The one transition of the snapshot catalog: `apply(catalog, record)` changes the catalog as
 * the journal record says, and returns what the running server must do about it (`Effects`).
 * It is deterministic and does no I/O: no store, no registry, no events, no clock.
 *
 * Used both ways, like LevelDB's `VersionSet::Builder::Apply` (its MANIFEST edits):
 * - at start, `replay` folds `apply` over the journal's records (effects are dropped: the slots
 *   still referenced at the end are claimed, the rest are free);
 * - at run time, every path that changes the catalog builds records, commits them durably, then
 *   applies each and acts on its effects (recorder.ts).
 * So the state after a restart is the state the server had when it stopped or crashed.
 *
 * Records that can reach the journal concurrently (copies, invalidations, deletes, a writable
 * snapshot's own chunks) give the same state in either order: a copy or a private chunk applied
 * after the snapshots that needed it were deleted or invalidated is freed at once, as the prune
 * at their record would have freed it.
 */
import { CbtTracker } from '../cbt/tracker.ts';
import { NbdsnapError } from '../errors.ts';
import type { JournalRecord } from '../store/records.ts';
import { Catalog } from './catalog.ts';
import { copyOf, PrivateChunks } from './exception-table.ts';
import { mergeChunks } from './merge.ts';
import { OriginState, type Snapshot } from './model.ts';

/** What the running server does after a record is applied. */
export interface Effects {
  /** Store slots nothing references any more: released for reuse. */
  freed: number[];
  /** Snapshots taken (SNAPSHOT): their exports are published. */
  created: Snapshot[];
  /** Snapshots deleted (DELETE): their exports go; connections still open answer EIO. */
  removed: Snapshot[];
  /** Snapshots now invalid (INVALID): their exports answer EIO; an `invalidated` event. */
  invalidated: Snapshot[];
  /** Snapshots whose merge began (MERGE, not deferred): their own exports go. */
  merging: Snapshot[];
}

export function noEffects(): Effects {
  return { freed: [], created: [], removed: [], invalidated: [], merging: [] };
}

/**
 * Apply one journal record to the catalog. Unknown record types change nothing. The effects are
 * added to `fx` (a new set by default).
 */
export function apply(cat: Catalog, rec: JournalRecord, fx: Effects = noEffects()): Effects {
  switch (rec.type) {
    case 'DEVICE':
      if (cat.origins.has(rec.device))
        throw new NbdsnapError('CORRUPT', `journal: device ${rec.device} recorded twice`);
      cat.origins.set(rec.device, new OriginState(rec.device, rec.name, rec.size, cat.chunkSize));
      break;
    case 'SNAPSHOT':
      takeSnapshots(cat, rec, fx);
      break;
    case 'DELETE':
    case 'INVALID':
      endSnapshot(cat, rec.snapshot, rec.type === 'INVALID' ? rec.reason : undefined, fx);
      break;
    case 'EXCEPTION': {
      const origin = cat.origins.get(rec.device);
      if (origin === undefined) {
        fx.freed.push(rec.slot);
        break;
      }
      origin.table.add(rec.chunk, rec.seq, rec.slot, rec.crc);
      // The usual case, cheaply: the newest copy of the chunk, read by a snapshot, so kept, and
      // the older copies' readers are unchanged. Otherwise the chunk is pruned as a whole.
      if (!newestAndRead(origin, rec.chunk, rec.seq, rec.slot))
        origin.table.pruneChunk(rec.chunk, origin.readers, (slot) => fx.freed.push(slot));
      break;
    }
    case 'PRIVATE': {
      const snap = cat.snapshots.get(rec.snapshot);
      if (snap === undefined || snap.state === 'invalid') {
        fx.freed.push(rec.slot);
        break;
      }
      // A later PRIVATE of the same chunk replaces it (redirect-on-write): the old slot is free.
      const before = snap.privateChunks.get(rec.chunk);
      if (before !== undefined && before.slot !== rec.slot) fx.freed.push(before.slot);
      snap.privateChunks.set(rec.chunk, copyOf(rec.slot, rec.crc));
      break;
    }
    case 'LOST': {
      // A damaged copy: reads of it answer EIO from now on (it stays referenced, never freed here).
      const origin = cat.origins.get(rec.device);
      origin?.table.lose(rec.chunk, rec.slot, origin.snapshots);
      break;
    }
    case 'MERGE':
      beginMerge(cat, rec.snapshot, rec.deferred, fx);
      break;
    case 'MERGED': {
      const m = cat.merges.get(rec.snapshot);
      if (m !== undefined) for (let c = rec.chunk; c < rec.chunk + rec.count; c++) m.merged.add(c);
      break;
    }
    case 'CBT_GEN': {
      const origin = cat.origins.get(rec.device);
      if (origin !== undefined)
        cat.trackers.set(rec.device, new CbtTracker(origin.size, rec.blockSize, rec.generation));
      cat.bookmarks.delete(rec.device); // a new generation: earlier points have no history
      break;
    }
    case 'CBT':
      cat.trackers.get(rec.device)?.mark(rec.era, rec.block, rec.count);
      break;
    case 'FORGET':
      forgetPoint(cat, rec.device, rec.name);
      break;
    case 'CHECKPOINT':
      // A journal that starts with the state (checkpoint.ts): the counters deleted snapshots advanced.
      cat.nextSnapshotId = Math.max(cat.nextSnapshotId, rec.nextSnapshotId);
      cat.nextSeq = Math.max(cat.nextSeq, rec.nextSeq);
      break;
    case 'BOOKMARK': {
      const marks = cat.bookmarks.get(rec.device) ?? new Map<string, number>();
      marks.set(rec.name, rec.seq);
      cat.bookmarks.set(rec.device, marks);
      break;
    }
    case 'MERGE_PLAN': {
      // The chunk list fixed at a merge's MERGE, recorded before it: that MERGE keeps it.
      const snap = cat.snapshots.get(rec.snapshot);
      if (snap === undefined || snap.state === 'invalid') break;
      const m = cat.merges.get(rec.snapshot) ?? { deferred: false, merged: new Set<number>(), chunks: [] };
      const chunks = m.chunks ?? [];
      for (const [chunk, count] of rec.runs) for (let c = chunk; c < chunk + count; c++) chunks.push(c);
      cat.merges.set(rec.snapshot, { ...m, chunks });
      break;
    }
    default:
      // COMMIT closes a batch; other records do not concern the catalog.
      break;
  }
  return fx;
}

/**
 * Whether the copy in `slot` (just added with `seq`) is the newest copy of `chunk` and some
 * snapshot reads it (the one with the largest seq <= `seq` resolves to it): then pruning the
 * chunk would keep everything.
 */
function newestAndRead(origin: OriginState, chunk: number, seq: number, slot: number): boolean {
  if (origin.table.latest(chunk) !== seq) return false;
  const readers = origin.readers;
  for (let i = readers.length - 1; i >= 0; i--) {
    const s = readers[i] as Snapshot;
    if (s.seq <= seq) return origin.table.find(chunk, s.seq)?.slot === slot;
  }
  return false;
}

/** The catalog a journal describes: `apply` folded over its records. */
export function replay(records: Iterable<JournalRecord>, chunkSize: number): Catalog {
  const cat = new Catalog(chunkSize);
  const fx = noEffects(); // dropped: one set of arrays, emptied, for every record
  for (const rec of records) {
    apply(cat, rec, fx);
    if (fx.freed.length + fx.created.length + fx.removed.length + fx.invalidated.length + fx.merging.length > 0) {
      fx.freed.length = 0;
      fx.created.length = 0;
      fx.removed.length = 0;
      fx.invalidated.length = 0;
      fx.merging.length = 0;
    }
  }
  return cat;
}

function takeSnapshots(cat: Catalog, rec: Extract<JournalRecord, { type: 'SNAPSHOT' }>, fx: Effects): void {
  const origins = rec.members.map((m) => {
    const origin = cat.origins.get(m.device);
    if (origin === undefined)
      throw new NbdsnapError('CORRUPT', `journal: snapshot ${m.snapshot} of unknown device ${m.device}`);
    return origin;
  });
  rec.members.forEach((m, i) => {
    const origin = origins[i] as OriginState;
    const snap: Snapshot = {
      id: m.snapshot,
      name: rec.name,
      origin,
      seq: m.seq,
      writable: m.writable,
      created: rec.created,
      state: 'valid',
      privateChunks: new PrivateChunks(),
    };
    origin.snapshots.push(snap);
    origin.refresh();
    cat.snapshots.set(m.snapshot, snap);
    const marks = cat.bookmarks.get(m.device) ?? new Map<string, number>();
    marks.set(rec.name, m.seq);
    cat.bookmarks.set(m.device, marks);
    cat.nextSnapshotId = Math.max(cat.nextSnapshotId, m.snapshot + 1);
    cat.nextSeq = Math.max(cat.nextSeq, m.seq + 1);
    fx.created.push(snap);
  });
}

/**
 * FORGET: the point leaves the bookmarks, then the tracker drops and merges the eras that no
 * remaining point (a bookmark, or a snapshot that still exists) can ask for. The point of a
 * snapshot that still exists is kept (the command refuses it): its export asks for eras up to
 * its seq. A CBT record applied on either side of a FORGET gives the same answers to every query
 * between remaining points (only which era holds a mark may differ).
 */
function forgetPoint(cat: Catalog, device: number, name: string): void {
  const marks = cat.bookmarks.get(device);
  const live = cat.origins.get(device)?.snapshots ?? [];
  if (marks === undefined || !marks.has(name) || live.some((s) => s.name === name)) return;
  marks.delete(name);
  const points = [...marks.values(), ...live.map((s) => s.seq)];
  cat.trackers.get(device)?.forget(points, cat.nextSeq);
}

/** DELETE (`reason` undefined) or INVALID: free what only this snapshot needed. */
function endSnapshot(cat: Catalog, id: number, reason: string | undefined, fx: Effects): void {
  const snap = cat.snapshots.get(id);
  if (snap === undefined) return;
  if (reason !== undefined && snap.state === 'invalid') return; // keeps its first reason
  for (const own of snap.privateChunks.values()) fx.freed.push(own.slot);
  snap.privateChunks.clear();
  cat.merges.delete(id); // an invalid snapshot is never merged
  snap.state = 'invalid';
  if (reason === undefined) {
    // Connections still open to a deleted snapshot answer EIO: its slots are about to be reused.
    snap.reason = 'deleted';
    snap.origin.snapshots.splice(snap.origin.snapshots.indexOf(snap), 1);
    cat.snapshots.delete(id);
    fx.removed.push(snap);
  } else {
    snap.reason = reason;
    snap.mergeScheduled = false;
    fx.invalidated.push(snap);
  }
  snap.origin.refresh();
  snap.origin.table.prune(snap.origin.readers, (slot) => fx.freed.push(slot));
}

/**
 * MERGE: scheduled for the next start (deferred), or begun. The chunks to merge are fixed here,
 * from the table as it is at this record, at run time as at replay (see merge.ts for why).
 */
function beginMerge(cat: Catalog, id: number, deferred: boolean, fx: Effects): void {
  const snap = cat.snapshots.get(id);
  if (snap === undefined || snap.state === 'invalid') return;
  const before = cat.merges.get(id);
  cat.merges.set(id, {
    deferred,
    merged: before?.merged ?? new Set(),
    chunks: before?.chunks ?? (deferred ? undefined : mergeChunks(snap)),
  });
  if (deferred) {
    snap.mergeScheduled = true;
    return;
  }
  snap.mergeScheduled = false;
  if (snap.state === 'merging') return;
  snap.state = 'merging';
  snap.origin.refresh();
  fx.merging.push(snap);
}
