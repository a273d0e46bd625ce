/**
 * Status views of snapshots and the store, as plain JSON-able objects for the control socket.
 * Store use is attributed to snapshots: a snapshot's private chunks are its own; a shared copy
 * is counted for the newest live snapshot that reads it (deleting that one frees it, unless an
 * older snapshot reads it too).
 */
import type { DiffStore } from '../store/store.ts';
import type { OriginState, Snapshot } from './model.ts';

export function deviceInfo(o: OriginState) {
  return { name: o.name, size: o.size, chunkSize: o.chunkSize, snapshots: o.snapshots.length };
}

export function snapshotInfo(s: Snapshot, store: DiffStore | undefined) {
  const shared = [...s.origin.table.entries()].filter(([chunk, v]) => s.origin.table.find(chunk, s.seq) === v);
  const copies = shared.length;
  let damaged = 0;
  for (const [chunk, v] of shared) if (v.lost && !s.privateChunks.has(chunk)) damaged += 1;
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
    chunksInStore: copies + s.privateChunks.size,
    privateChunks: s.privateChunks.size,
    /** Chunks it reads whose store copy was found damaged (lost): reads of them answer EIO. */
    damaged,
    chunkSize: store?.chunkSize ?? s.origin.chunkSize,
  };
}

export function storeInfo(store: DiffStore, origins: OriginState[]) {
  const perSnapshot = new Map<string, number>();
  const add = (key: string, n: number) => perSnapshot.set(key, (perSnapshot.get(key) ?? 0) + n);
  for (const o of origins) {
    for (const s of o.snapshots) add(`${o.name}@${s.name}`, s.privateChunks.size);
    const live = o.live;
    for (const [, v] of o.table.entries()) {
      let owner: Snapshot | undefined;
      for (const s of live) if (s.seq <= v.seq) owner = s;
      if (owner !== undefined) add(`${o.name}@${owner.name}`, 1);
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
    perSnapshot: [...perSnapshot].map(([snapshot, chunks]) => ({ snapshot, bytes: chunks * store.chunkSize })),
  };
}
