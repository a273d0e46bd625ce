/**
 * Block status of a snapshot export (snapshot-device.ts): `base:allocation` and
 * `qemu:allocation-depth` extents. Walks only the chunks the snapshot reads from the store (the
 * exception table is ordered: O(log n) to find the next one and the end of its run,
 * `storedRunEnd`), and asks `originExtents` for the stretches between them, which the snapshot
 * reads through to the origin.
 */
import { pushExtent } from '../block/device.ts';
import type { Extent } from '../nbd-protocol/index.ts';
import type { Snapshot } from './model.ts';

/** At most this many extents in one answer (the client asks again for the rest). */
const MAX_EXTENTS = 65536;

/** Extents of [offset, offset + length) of `snap` (a device of `size` bytes); store chunks get `storeFlags`. */
export async function snapshotExtents(
  snap: Snapshot,
  size: number,
  offset: number,
  length: number,
  originExtents: (start: number, len: number) => Promise<Extent[]>,
  storeFlags: number,
): Promise<Extent[]> {
  const end = Math.min(size, offset + length);
  const { table, chunkSize } = snap.origin;
  const out: Extent[] = [];
  for (let pos = offset; pos < end && out.length < MAX_EXTENTS; ) {
    const next = table.nextStored(Math.floor(pos / chunkSize), snap);
    const stored = next === undefined ? end : Math.max(pos, Math.min(end, next * chunkSize));
    if (stored > pos) {
      await throughToOrigin(out, pos, stored - pos, originExtents);
      pos = stored;
      continue;
    }
    // A run of chunks read from the store, from `next` on: each is a copied or private chunk.
    const runEnd = Math.min(end, table.storedRunEnd(next as number, snap, Math.ceil(end / chunkSize)) * chunkSize);
    pushExtent(out, runEnd - pos, storeFlags);
    pos = runEnd;
  }
  return out;
}

/** The origin's extents over [start, start + len), appended to `out`. */
async function throughToOrigin(
  out: Extent[],
  start: number,
  len: number,
  originExtents: (start: number, len: number) => Promise<Extent[]>,
): Promise<void> {
  let covered = 0;
  while (covered < len) {
    const ext = await originExtents(start + covered, len - covered);
    for (const e of ext) {
      const take = Math.min(e.length, len - covered);
      pushExtent(out, take, e.flags);
      covered += take;
      if (covered >= len) break;
    }
    if (ext.length === 0) break;
  }
}
