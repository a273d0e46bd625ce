/**
 * Store use per snapshot (src/snapshot/status.ts), without a server: which copies each snapshot
 * reads, which only it reads, and that `snapshot list` and `store status` give the same figures.
 */
import { describe, expect, it } from 'vitest';
import { copyOf } from '../../src/snapshot/exception-table.ts';
import { OriginState, type Snapshot, type SnapshotState } from '../../src/snapshot/model.ts';
import { snapshotInfo, storeUse } from '../../src/snapshot/status.ts';

function device(): OriginState {
  return new OriginState(1, 'disk', 64 * 65536, 65536);
}

function snap(o: OriginState, name: string, seq: number, state: SnapshotState = 'valid'): Snapshot {
  const s: Snapshot = {
    id: seq,
    name,
    origin: o,
    seq,
    writable: false,
    created: 0,
    state,
    privateChunks: new Map(),
  };
  o.snapshots.push(s);
  o.refresh();
  return s;
}

const figures = (o: OriginState) =>
  Object.fromEntries([...storeUse(o)].map(([s, u]) => [s.name, [u.chunksInStore, u.exclusiveChunks]]));

describe('storeUse', () => {
  it('counts a shared copy for every reader and as exclusive for none', () => {
    const o = device();
    snap(o, 'a', 1);
    snap(o, 'b', 2);
    snap(o, 'c', 3);
    let slot = 0;
    // Chunks 0, 1 copied while a was newest: only a reads them.
    for (const chunk of [0, 1]) o.table.add(chunk, 1, slot++, 0);
    // Chunk 1 again, and chunk 2, copied while c was newest: read by b and c (and a for chunk 2).
    for (const chunk of [1, 2]) o.table.add(chunk, 3, slot++, 0);
    expect(figures(o)).toEqual({ a: [3, 2], b: [2, 0], c: [2, 0] });
  });

  it('adds private chunks, skips invalid snapshots, counts a merging one', () => {
    const o = device();
    const a = snap(o, 'a', 1);
    const b = snap(o, 'b', 2, 'invalid');
    const c = snap(o, 'c', 3, 'merging');
    o.table.add(5, 3, 0, 0); // read by a and c; b is invalid and reads nothing
    a.privateChunks.set(9, copyOf(1, 0));
    b.privateChunks.set(9, copyOf(2, 0));
    c.privateChunks.set(8, copyOf(3, 0));
    expect(figures(o)).toEqual({ a: [2, 1], b: [1, 1], c: [2, 1] });
  });

  it('does not count a copy for snapshots taken after it, nor one no snapshot reads', () => {
    const o = device();
    snap(o, 'a', 1);
    o.table.add(0, 1, 0, 0);
    snap(o, 'b', 4); // b reads chunk 0 from the origin
    o.table.add(3, 2, 1, 0); // copied before b was taken (seq 2 < 4): read by a only
    expect(figures(o)).toEqual({ a: [2, 2], b: [0, 0] });
  });

  it('is what snapshot list shows', () => {
    const o = device();
    const a = snap(o, 'a', 1);
    o.table.add(0, 1, 0, 0);
    o.table.add(1, 1, 1, 0);
    const info = snapshotInfo(a, undefined);
    expect([info.chunksInStore, info.exclusiveChunks, info.chunkSize]).toEqual([2, 2, 65536]);
  });
});
