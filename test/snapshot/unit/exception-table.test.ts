/**
 * The exception table alone: versioned copies (one copy serves every snapshot taken before it),
 * which copy each snapshot reads, when a write must copy first, and pruning copies no snapshot
 * reads any more.
 */
import { describe, expect, it } from 'vitest';
import { copyOf, ExceptionTable, type SnapshotRef } from '../../../src/snapshot/exception-table.ts';

const snap = (seq: number, own: [number, number][] = []): SnapshotRef => ({
  seq,
  privateChunks: new Map(own.map(([chunk, slot]) => [chunk, copyOf(slot, 0)])),
});

describe('versions', () => {
  it('a snapshot reads the oldest copy made after it was taken, else the origin', () => {
    const t = new ExceptionTable();
    // Chunk 7 copied while snapshot 2 was the newest (slot 10), then while 5 was (slot 11).
    t.add(7, 2, 10, 0);
    t.add(7, 5, 11, 0);
    expect(t.size).toBe(2);
    expect(t.latest(7)).toBe(5);
    expect(t.latest(8)).toBe(0);
    expect(t.resolve(7, snap(1))).toMatchObject({ from: 'store', slot: 10, private: false });
    expect(t.resolve(7, snap(2))).toMatchObject({ from: 'store', slot: 10, private: false });
    expect(t.resolve(7, snap(3))).toMatchObject({ from: 'store', slot: 11, private: false });
    expect(t.resolve(7, snap(5))).toMatchObject({ from: 'store', slot: 11, private: false });
    expect(t.resolve(7, snap(6))).toEqual({ from: 'origin' });
    expect(t.resolve(8, snap(1))).toEqual({ from: 'origin' });
  });

  it('keeps versions ordered by sequence whatever the order they are added in', () => {
    const t = new ExceptionTable();
    t.add(1, 9, 3, 0);
    t.add(1, 4, 2, 0);
    expect(t.find(1, 3)?.slot).toBe(2);
    expect(t.find(1, 5)?.slot).toBe(3);
    expect([...t.entries()]).toMatchObject([
      [1, { seq: 4, slot: 2 }],
      [1, { seq: 9, slot: 3 }],
    ]);
  });

  it("a writable snapshot's own chunk comes first", () => {
    const t = new ExceptionTable();
    t.add(3, 2, 10, 0);
    expect(t.resolve(3, snap(2, [[3, 99]]))).toMatchObject({ from: 'store', slot: 99, private: true });
    expect(t.resolve(4, snap(2, [[3, 99]]))).toEqual({ from: 'origin' });
  });

  it('lists the chunks with copies in ascending order', () => {
    const t = new ExceptionTable();
    for (const [c, seq, slot] of [
      [9, 1, 1],
      [2, 1, 2],
      [5, 1, 3],
      [2, 3, 4],
    ] as const)
      t.add(c, seq, slot, 0);
    expect(t.chunks()).toEqual([2, 5, 9]);
  });
});

describe('needsCopy', () => {
  it('is false without live snapshots', () => {
    expect(new ExceptionTable().needsCopy(0, [])).toBe(false);
  });

  it('is true until a copy at least as new as the newest live snapshot exists', () => {
    const t = new ExceptionTable();
    const live = [snap(2), snap(4)];
    expect(t.needsCopy(0, live)).toBe(true);
    t.add(0, 2, 1, 0);
    expect(t.needsCopy(0, live)).toBe(true); // snapshot 4 still reads the origin
    t.add(0, 4, 2, 0);
    expect(t.needsCopy(0, live)).toBe(false);
    expect(t.needsCopy(1, live)).toBe(true);
  });

  it('skips snapshots that hold the chunk privately', () => {
    const t = new ExceptionTable();
    t.add(0, 1, 1, 0);
    // Snapshot 3 has its own chunk 0; snapshot 1 has the copy: nothing to copy.
    expect(t.needsCopy(0, [snap(1), snap(3, [[0, 50]])])).toBe(false);
    // Snapshot 2 (no own chunk, newer than the copy) needs one.
    expect(t.needsCopy(0, [snap(1), snap(2), snap(3, [[0, 50]])])).toBe(true);
  });
});

describe('prune', () => {
  it('frees exactly the copies no live snapshot reads', () => {
    const t = new ExceptionTable();
    t.add(0, 2, 10, 0); // read by snapshots with seq in (0, 2]
    t.add(0, 5, 11, 0); // (2, 5]
    t.add(1, 5, 12, 0); // (0, 5]
    t.add(2, 8, 13, 0); // (0, 8]
    const freed: number[] = [];
    t.prune([snap(4), snap(8)], (slot) => freed.push(slot));
    expect(freed).toEqual([10]);
    expect(t.size).toBe(3);
    expect(t.resolve(0, snap(4))).toMatchObject({ from: 'store', slot: 11, private: false });
    t.prune([snap(8)], (slot) => freed.push(slot));
    expect(freed.sort((a, b) => a - b)).toEqual([10, 11, 12]);
    expect(t.chunks()).toEqual([2]);
    t.prune([], (slot) => freed.push(slot));
    expect(t.size).toBe(0);
    expect(t.chunks()).toEqual([]);
  });

  it('pruneChunk drops a copy added after its readers went, and only that chunk', () => {
    const t = new ExceptionTable();
    t.add(0, 3, 10, 0);
    t.add(1, 3, 11, 0);
    const freed: number[] = [];
    t.pruneChunk(1, [snap(6)], (slot) => freed.push(slot));
    expect(freed).toEqual([11]);
    expect(t.chunks()).toEqual([0]);
    // The result is the same as a whole-table prune with the same readers, chunk by chunk.
    t.prune([snap(6)], (slot) => freed.push(slot));
    expect(freed).toEqual([11, 10]);
  });
});
