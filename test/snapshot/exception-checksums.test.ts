/**
 * Unit tests, no server: the exception table keeps each copy's checksum and lost flag, hands
 * them out with the slot, marks copies lost by slot (shared versions and private chunks), and
 * replay applies EXCEPTION / PRIVATE checksums and LOST records the way the running server did.
 */
import { describe, expect, it } from 'vitest';
import { copyOf, ExceptionTable, type SnapshotRef } from '../../src/snapshot/exception-table.ts';
import { replay } from '../../src/snapshot/transition.ts';
import { checksum } from '../../src/store/checksum.ts';
import type { JournalRecord } from '../../src/store/records.ts';
import { pattern } from '../helpers/clients.ts';

const snap = (seq: number, own: [number, number, number][] = []): SnapshotRef => ({
  seq,
  privateChunks: new Map(own.map(([chunk, slot, crc]) => [chunk, copyOf(slot, crc)])),
});

describe('exception table with checksums', () => {
  it('resolves a copy with its slot and checksum (u32 kept as int32)', () => {
    const t = new ExceptionTable();
    const crc = checksum(pattern(4096, 3));
    t.add(7, 2, 40, 0xfffffffe);
    t.add(9, 2, 41, crc);
    const s = snap(1);
    const a = t.resolve(7, s);
    expect(a).toMatchObject({ from: 'store', slot: 40, crc: 0xfffffffe | 0, private: false });
    expect(a.from === 'store' && (a.crc | 0) === (0xfffffffe | 0) && a.copy.lost === false).toBe(true);
    expect(t.resolve(9, s)).toMatchObject({ slot: 41, crc: crc | 0 });
    expect(t.resolve(8, s)).toEqual({ from: 'origin' });
    expect(t.size).toBe(2);
  });

  it('versions of one chunk: each snapshot reads its own, with its own checksum', () => {
    const t = new ExceptionTable();
    t.add(5, 3, 11, 333);
    t.add(5, 1, 10, 111); // out of order on purpose
    t.add(5, 6, 12, 666);
    expect(t.latest(5)).toBe(6);
    expect([1, 2, 3, 4, 6, 7].map((seq) => t.resolve(5, snap(seq)))).toMatchObject([
      { slot: 10, crc: 111 },
      { slot: 11, crc: 333 },
      { slot: 11, crc: 333 },
      { slot: 12, crc: 666 },
      { slot: 12, crc: 666 },
      { from: 'origin' },
    ]);
    t.remove(5, 11);
    t.remove(5, 12);
    expect([...t.entries()]).toEqual([[5, { seq: 1, slot: 10, crc: 111, lost: false }]]);
    expect(t.size).toBe(1);
  });

  it('a private chunk resolves before shared copies, with its checksum', () => {
    const t = new ExceptionTable();
    t.add(2, 1, 20, 1);
    expect(t.resolve(2, snap(1, [[2, 30, 0xabcdef01]]))).toMatchObject({
      from: 'store',
      slot: 30,
      crc: 0xabcdef01 | 0,
      private: true,
    });
  });

  it('marks copies lost by slot; a lost copy still covers its chunk (never falls through to the origin)', () => {
    const t = new ExceptionTable();
    t.add(4, 1, 50, 1);
    t.add(4, 3, 51, 2);
    const w = snap(2, [[6, 60, 9]]);
    expect(t.lose(4, 51, [w])?.slot).toBe(51);
    expect(t.lose(6, 60, [w])).toBe(w.privateChunks.get(6));
    expect(t.lose(4, 99, [w])).toBeUndefined();
    expect(t.resolve(4, snap(1))).toMatchObject({ slot: 50, copy: { lost: false } });
    expect(t.resolve(4, snap(3))).toMatchObject({ slot: 51, copy: { lost: true } });
    expect(t.resolve(6, w)).toMatchObject({ slot: 60, copy: { lost: true } });
    expect(t.needsCopy(4, [snap(3)])).toBe(false);
    // Pruned like any copy once nobody reads it.
    const freed: number[] = [];
    t.prune([snap(1)], (slot) => freed.push(slot));
    expect(freed).toEqual([51]);
  });
});

describe('replay of checksums and LOST', () => {
  const records: JournalRecord[] = [
    { type: 'DEVICE', device: 1, size: 1 << 20, name: 'disk' },
    { type: 'SNAPSHOT', created: 0, name: 'a', members: [{ snapshot: 1, device: 1, seq: 1, writable: false }] },
    { type: 'SNAPSHOT', created: 0, name: 'w', members: [{ snapshot: 2, device: 1, seq: 2, writable: true }] },
    { type: 'EXCEPTION', device: 1, seq: 2, chunk: 3, slot: 10, crc: 0xdeadbeef },
    { type: 'EXCEPTION', device: 1, seq: 2, chunk: 4, slot: 11, crc: 44 },
    { type: 'PRIVATE', snapshot: 2, chunk: 5, slot: 12, crc: 55 },
    { type: 'PRIVATE', snapshot: 2, chunk: 5, slot: 13, crc: 56 }, // redirect-on-write: replaces slot 12
    { type: 'LOST', device: 1, chunk: 4, slot: 11 },
    { type: 'LOST', device: 1, chunk: 5, slot: 13 },
    { type: 'LOST', device: 1, chunk: 3, slot: 77 }, // a slot no copy holds: ignored
  ];

  it('rebuilds checksums and lost flags; a replaced private slot is free', () => {
    const st = replay(records, 65536);
    const origin = st.origins.get(1);
    const a = st.snapshots.get(1);
    const w = st.snapshots.get(2);
    if (origin === undefined || a === undefined || w === undefined) throw new Error('not replayed');
    expect(origin.table.resolve(3, a)).toMatchObject({ slot: 10, crc: 0xdeadbeef | 0, copy: { lost: false } });
    expect(origin.table.resolve(4, a)).toMatchObject({ slot: 11, crc: 44, copy: { lost: true } });
    expect(origin.table.resolve(5, w)).toMatchObject({ slot: 13, crc: 56, private: true, copy: { lost: true } });
    expect([...st.usedSlots()].sort((x, y) => x - y)).toEqual([10, 11, 13]);
  });
});
