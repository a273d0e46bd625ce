/**
 * Status views of snapshots and the store, as plain JSON-able objects for the control socket.
 *
 * A snapshot's store use is computed once, by `storeUse`, for both `snapshot list` and
 * `store status`, so they always agree:
 * - `chunksInStore`: the chunks it reads from the store, copies it shares with other snapshots
 *   and its own (private) chunks; its size in the store.
 * - `exclusiveChunks`: the chunks no other snapshot reads; deleting it frees exactly these.
 * Shared copies count for every snapshot that reads them, so the sizes of several snapshots may
 * add up to more than the store's used bytes.
 */
import type { DiffStore } from '../store/store.ts';
import { sameCopy } from './exception-table.ts';
import type { OriginState, Snapshot } from './model.ts';

export interface SnapshotUse {
  chunksInStore: number;
  exclusiveChunks: number;
}

export function deviceInfo(o: OriginState) {
  return { name: o.name, size: o.size, chunkSize: o.chunkSize, snapshots: o.snapshots.length };
}

/**
 * Store use of every snapshot of one device. A copy with sequence N whose predecessor has P is
 * read by the snapshots with P < seq <= N that still read copies (`readers`: valid or merging);
 * an invalid snapshot reads nothing but its private chunks until they are released.
 * O(copies x log(snapshots) + snapshots).
 */
export function storeUse(o: OriginState): Map<Snapshot, SnapshotUse> {
  const readers = o.readers;
  const shared = new Array<number>(readers.length + 1).fill(0);
  const only = new Array<number>(readers.length).fill(0);
  let prev = 0;
  let chunk = -1;
  for (const [c, v] of o.table.entries()) {
    if (c !== chunk) {
      chunk = c;
      prev = 0;
    }
    const from = firstAbove(readers, prev);
    const to = firstAbove(readers, v.seq);
    prev = v.seq;
    if (to <= from) continue;
    // Difference array: +1 for readers[from .. to - 1].
    shared[from] = (shared[from] ?? 0) + 1;
    shared[to] = (shared[to] ?? 0) - 1;
    if (to - from === 1) only[from] = (only[from] ?? 0) + 1;
  }
  const use = new Map<Snapshot, SnapshotUse>();
  let running = 0;
  readers.forEach((s, i) => {
    running += shared[i] ?? 0;
    const own = s.privateChunks.size;
    use.set(s, { chunksInStore: running + own, exclusiveChunks: (only[i] ?? 0) + own });
  });
  for (const s of o.snapshots) {
    if (!use.has(s)) use.set(s, { chunksInStore: s.privateChunks.size, exclusiveChunks: s.privateChunks.size });
  }
  return use;
}

/** Index of the first snapshot in `sorted` (ascending seq) with seq > `seq`. */
function firstAbove(sorted: readonly Snapshot[], seq: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((sorted[mid] as Snapshot).seq > seq) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

export function snapshotInfo(s: Snapshot, store: DiffStore | undefined, use = storeUse(s.origin).get(s)) {
  let damaged = 0;
  const table = s.origin.table;
  for (const [chunk, v] of table.lost()) {
    if (s.privateChunks.has(chunk)) continue;
    const read = table.find(chunk, s.seq);
    if (read !== undefined && sameCopy(read, v)) damaged += 1;
  }
  for (const own of s.privateChunks.values()) if (own.lost) damaged += 1;
  return {
    device: s.origin.name,
    name: s.name,
    export: `${s.origin.name}@${s.name}`,
    state: s.state,
    ...(s.reason === undefined ? {} : { reason: s.reason }),
    writable: s.writable,
    created: new Date(s.created).toISOString(),
    /** Chunks this snapshot reads from the store (shared copies and its own). */
    chunksInStore: use?.chunksInStore ?? 0,
    /** Chunks only this snapshot reads: what deleting it frees. */
    exclusiveChunks: use?.exclusiveChunks ?? 0,
    privateChunks: s.privateChunks.size,
    /** Chunks it reads whose store copy was found damaged (lost): reads of them answer EIO. */
    damaged,
    chunkSize: store?.chunkSize ?? s.origin.chunkSize,
  };
}

export function storeInfo(store: DiffStore, origins: OriginState[]) {
  const perSnapshot: { snapshot: string; bytes: number; exclusiveBytes: number }[] = [];
  for (const o of origins) {
    const use = storeUse(o);
    for (const s of [...o.snapshots].sort((a, b) => a.seq - b.seq)) {
      const u = use.get(s) ?? { chunksInStore: 0, exclusiveChunks: 0 };
      perSnapshot.push({
        snapshot: `${o.name}@${s.name}`,
        bytes: u.chunksInStore * store.chunkSize,
        exclusiveBytes: u.exclusiveChunks * store.chunkSize,
      });
    }
  }
  const status = store.status();
  return {
    ...status,
    ranges: status.ranges.map((r) => ({
      path: r.path,
      startSector: r.start / 512,
      sectors: r.length / 512,
      bytes: r.length,
      slots: r.slots,
    })),
    perSnapshot,
  };
}
