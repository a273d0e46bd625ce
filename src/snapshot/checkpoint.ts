/**
 * A checkpoint of the catalog as journal records (LevelDB's MANIFEST, which starts with a
 * snapshot of the current version): `checkpointRecords(catalog)` yields records that, applied by
 * the same `apply` (transition.ts) to an empty catalog, rebuild this catalog exactly. The store
 * writes them as a new journal (src/store/checkpoint-writer.ts) and switches to it, so the
 * journal's size and the replay at start follow the live state, not the history.
 *
 * Pure and lazy: nothing is read but the catalog, and records are made one at a time while the
 * writer consumes them (the catalog must not change meanwhile: the checkpointer holds records
 * back). The order matters where `apply` depends on what came before:
 *
 * - CHECKPOINT first: the counters (next snapshot id, next seq) that deleted snapshots advanced;
 * - DEVICE before anything of that device;
 * - SNAPSHOT per snapshot (one member each: a group's members share name and time, nothing
 *   else), INVALID right after an invalid one (its reason), then untracked devices' BOOKMARKs
 *   (after the SNAPSHOTs: a name can be a point of a later snapshot than one still listed, such as
 *   an invalid one, and SNAPSHOT sets its own seq for its name);
 * - CBT_GEN per tracker after the SNAPSHOTs (it clears the device's points: a generation started
 *   after a snapshot has no point for it), its eras' CBT runs, then all the device's BOOKMARKs;
 * - EXCEPTION per copy after every SNAPSHOT (a copy no snapshot reads is freed at once), LOST
 *   right after a lost one; PRIVATE per private chunk (LOST after it when lost);
 * - per merge: MERGE_PLAN records (its chunk list as fixed when it began: MERGE recomputes it
 *   only when no plan exists, and the table has changed since), MERGE (begun; and/or deferred),
 *   then its MERGED runs.
 *
 * `describeCatalog` is the canonical comparable form of a catalog (tests, and checks after a
 * checkpoint): the state the journal defines, none of the caches.
 */
import { type JournalRecord, MERGE_PLAN_RUNS } from '../store/records.ts';
import type { Catalog } from './catalog.ts';

const U32_MAX = 0xffffffff;

/** A device's points by name: the same records whatever order the catalog learnt them in. */
function byName(marks: ReadonlyMap<string, number> | undefined): [string, number][] {
  return [...(marks ?? [])].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** The records that rebuild `cat` from an empty catalog (see the order above). */
export function* checkpointRecords(cat: Catalog, at: number = Date.now()): IterableIterator<JournalRecord> {
  yield { type: 'CHECKPOINT', nextSnapshotId: cat.nextSnapshotId, nextSeq: cat.nextSeq, at };
  for (const o of cat.origins.values()) yield { type: 'DEVICE', device: o.id, size: o.size, name: o.name };
  for (const s of cat.snapshots.values()) {
    const member = { snapshot: s.id, device: s.origin.id, seq: s.seq, writable: s.writable };
    yield { type: 'SNAPSHOT', created: s.created, name: s.name, members: [member] };
    if (s.state === 'invalid') yield { type: 'INVALID', snapshot: s.id, reason: s.reason ?? '' };
  }
  for (const [device, marks] of cat.bookmarks)
    if (!cat.trackers.has(device))
      for (const [name, seq] of byName(marks)) yield { type: 'BOOKMARK', device, name, seq };
  for (const [device, tracker] of cat.trackers) {
    if (!cat.origins.has(device)) continue;
    yield { type: 'CBT_GEN', device, blockSize: tracker.blockSize, generation: tracker.generation };
    for (const [era, start, end] of tracker.eraRuns())
      for (let block = start; block < end; block += U32_MAX)
        yield { type: 'CBT', device, era, block, count: Math.min(U32_MAX, end - block) };
    for (const [name, seq] of byName(cat.bookmarks.get(device))) yield { type: 'BOOKMARK', device, name, seq };
  }
  for (const o of cat.origins.values()) {
    for (const [chunk, v] of o.table.entries()) {
      yield { type: 'EXCEPTION', device: o.id, seq: v.seq, chunk, slot: v.slot, crc: v.crc >>> 0 };
      if (v.lost) yield { type: 'LOST', device: o.id, chunk, slot: v.slot };
    }
  }
  for (const s of cat.snapshots.values()) {
    for (const [chunk, own] of s.privateChunks) {
      yield { type: 'PRIVATE', snapshot: s.id, chunk, slot: own.slot, crc: own.crc >>> 0 };
      if (own.lost) yield { type: 'LOST', device: s.origin.id, chunk, slot: own.slot };
    }
  }
  const perPlan = Math.max(1, Math.min(MERGE_PLAN_RUNS, Math.floor(cat.chunkSize / 2 / 12)));
  for (const [snapshot, m] of cat.merges) {
    const snap = cat.snapshots.get(snapshot);
    if (snap === undefined) continue;
    if (m.chunks !== undefined) {
      const runs = toRuns(m.chunks);
      let i = 0;
      do {
        yield { type: 'MERGE_PLAN', snapshot, runs: runs.slice(i, i + perPlan) };
        i += perPlan;
      } while (i < runs.length);
    }
    if (snap.state === 'merging') yield { type: 'MERGE', snapshot, deferred: false };
    if (m.deferred) yield { type: 'MERGE', snapshot, deferred: true };
    for (const [chunk, count] of toRuns([...m.merged].sort((a, b) => a - b)))
      yield { type: 'MERGED', snapshot, chunk, count };
  }
}

/** Consecutive runs [first, count] of a list of chunks, in its order (counts below 2^32). */
function toRuns(chunks: readonly number[]): [number, number][] {
  const runs: [number, number][] = [];
  let last: [number, number] | undefined;
  for (const c of chunks) {
    if (last !== undefined && c === last[0] + last[1] && last[1] < U32_MAX) last[1] += 1;
    else {
      last = [c, 1];
      runs.push(last);
    }
  }
  return runs;
}

/** The catalog as plain, ordered data: two catalogs describe alike when their states are the same. */
export function describeCatalog(cat: Catalog): unknown {
  const byNumber = (a: [number, ...unknown[]], b: [number, ...unknown[]]) => a[0] - b[0];
  return {
    chunkSize: cat.chunkSize,
    nextSnapshotId: cat.nextSnapshotId,
    nextSeq: cat.nextSeq,
    devices: [...cat.origins.values()]
      .map((o) => ({
        id: o.id,
        name: o.name,
        size: o.size,
        copies: [...o.table.entries()]
          .map(([chunk, v]) => [chunk, v.seq, v.slot, v.crc | 0, v.lost] as [number, ...unknown[]])
          .sort((a, b) => a[0] - b[0] || (a[1] as number) - (b[1] as number)),
        snapshots: o.snapshots.map((s) => s.id),
        live: o.live.map((s) => s.id),
        readers: o.readers.map((s) => s.id),
      }))
      .sort((a, b) => a.id - b.id),
    snapshots: [...cat.snapshots.values()]
      .map((s) => ({
        id: s.id,
        name: s.name,
        device: s.origin.id,
        seq: s.seq,
        writable: s.writable,
        created: s.created,
        state: s.state,
        reason: s.reason ?? null,
        mergeScheduled: s.mergeScheduled === true,
        private: [...s.privateChunks]
          .map(([chunk, c]) => [chunk, c.slot, c.crc | 0, c.lost] as [number, ...unknown[]])
          .sort(byNumber),
      }))
      .sort((a, b) => a.id - b.id),
    merges: [...cat.merges]
      .map(([id, m]) => ({
        id,
        deferred: m.deferred,
        chunks: m.chunks === undefined ? null : [...m.chunks],
        merged: [...m.merged].sort((a, b) => a - b),
      }))
      .sort((a, b) => a.id - b.id),
    trackers: [...cat.trackers]
      .map(([device, t]) => ({
        device,
        blockSize: t.blockSize,
        blockCount: t.blockCount,
        generation: t.generation,
        eras: [...t.eraRuns()].sort((a, b) => a[0] - b[0] || a[1] - b[1]),
      }))
      .sort((a, b) => a.device - b.device),
    bookmarks: [...cat.bookmarks]
      .map(([device, marks]) => ({ device, marks: [...marks].sort((a, b) => (a[0] < b[0] ? -1 : 1)) }))
      .filter((b) => b.marks.length > 0)
      .sort((a, b) => a.device - b.device),
  };
}
