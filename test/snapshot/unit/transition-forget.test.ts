/**
 * FORGET in the catalog's transition: the point leaves the bookmarks and the tracker keeps only
 * what the remaining points can ask for; the point of a snapshot that still exists, an unknown
 * name and an unknown device change nothing; a replay of DELETE + FORGET batches is the state
 * the run had; the record round-trips through its encoding.
 */
import { describe, expect, it } from 'vitest';
import type { Catalog } from '../../../src/snapshot/catalog.ts';
import { apply, replay } from '../../../src/snapshot/transition.ts';
import { decodeRecord, encodeRecord, type JournalRecord } from '../../../src/store/records.ts';
import { CHUNK } from './harness.ts';

const DEVICE = { type: 'DEVICE', device: 1, size: 16 * CHUNK + 512, name: 'a' } as const; // short last block
const GEN = { type: 'CBT_GEN', device: 1, blockSize: CHUNK, generation: 'g' } as const;
const snap = (name: string, id: number, seq: number): JournalRecord => ({
  type: 'SNAPSHOT',
  created: 1000,
  name,
  members: [{ snapshot: id, device: 1, seq, writable: false }],
});
const cbt = (era: number, block: number, count = 1): JournalRecord => ({ type: 'CBT', device: 1, era, block, count });
const forget = (name: string): JournalRecord => ({ type: 'FORGET', device: 1, name });

/** Changed blocks of device 1 between two seqs, as [first, count] runs. */
function changed(cat: Catalog, from: number, to = Number.POSITIVE_INFINITY): [number, number][] {
  return [...(cat.trackers.get(1)?.changed(from, to).runs() ?? [])];
}

function eras(cat: Catalog): number {
  const f = cat.trackers.get(1)?.footprint();
  return (f?.sparse ?? 0) + (f?.dense ?? 0);
}

/** s1..s4 taken (seq 1..4) with a write in each era (era e: block 2e, and the last block in era 3). */
const history: JournalRecord[] = [
  DEVICE,
  GEN,
  cbt(1, 2),
  snap('s1', 1, 1),
  cbt(2, 4),
  cbt(2, 0),
  snap('s2', 2, 2),
  cbt(3, 6),
  cbt(3, 16),
  snap('s3', 3, 3),
  cbt(4, 8),
  snap('s4', 4, 4),
  cbt(5, 10),
];

describe('FORGET', () => {
  it('removes a deleted snapshot point and merges the eras around it', () => {
    const cat = replay([...history, { type: 'DELETE', snapshot: 2 }], CHUNK);
    expect(eras(cat)).toBe(5);
    const before = changed(cat, 1, 3);
    apply(cat, forget('s2'));
    expect(cat.bookmarks.get(1)).toEqual(
      new Map([
        ['s1', 1],
        ['s3', 3],
        ['s4', 4],
      ]),
    );
    // era 1 (before s1) dropped, eras 2 and 3 merged into 3
    expect(eras(cat)).toBe(3);
    expect(changed(cat, 1, 3)).toEqual(before);
    expect(changed(cat, 1, 3)).toEqual([
      [0, 1],
      [4, 1],
      [6, 1],
      [16, 1],
    ]);
    expect(changed(cat, 3)).toEqual([
      [8, 1],
      [10, 1],
    ]);
  });

  it('forgetting the oldest point drops the eras up to the next one', () => {
    const cat = replay([...history, { type: 'DELETE', snapshot: 1 }, forget('s1')], CHUNK);
    expect(cat.bookmarks.get(1)?.has('s1')).toBe(false);
    expect(eras(cat)).toBe(3); // eras 3, 4 and 5
    expect(changed(cat, 2)).toEqual([
      [6, 1],
      [8, 1],
      [10, 1],
      [16, 1],
    ]);
  });

  it('with no point left, keeps only the current era', () => {
    const recs: JournalRecord[] = [...history];
    for (let id = 1; id <= 4; id++) recs.push({ type: 'DELETE', snapshot: id }, forget(`s${id}`));
    const cat = replay(recs, CHUNK);
    expect(cat.bookmarks.get(1)?.size).toBe(0);
    expect(eras(cat)).toBe(1);
    expect(changed(cat, 4)).toEqual([[10, 1]]);
  });

  it('keeps the point of a snapshot that exists, and ignores an unknown name or device', () => {
    const cat = replay(history, CHUNK);
    const before = replay(history, CHUNK);
    apply(cat, forget('s2'));
    apply(cat, forget('nope'));
    apply(cat, { type: 'FORGET', device: 9, name: 's2' });
    expect(cat).toEqual(before);
  });

  it('a snapshot of the same name taken again is a new point, forgotten on its own', () => {
    const cat = replay(
      [...history, { type: 'DELETE', snapshot: 2 }, snap('s2', 5, 5), cbt(6, 12), { type: 'DELETE', snapshot: 5 }],
      CHUNK,
    );
    expect(cat.bookmarks.get(1)?.get('s2')).toBe(5);
    apply(cat, forget('s2'));
    expect(cat.bookmarks.get(1)?.has('s2')).toBe(false);
    expect(changed(cat, 4)).toEqual([
      [10, 1],
      [12, 1],
    ]);
  });

  it('a run of DELETE + FORGET batches and its replay agree, with marks after them', () => {
    const recs: JournalRecord[] = [...history];
    const cat = replay(recs, CHUNK);
    const more: JournalRecord[] = [
      { type: 'DELETE', snapshot: 1 },
      { type: 'DELETE', snapshot: 2 },
      forget('s1'),
      cbt(5, 11),
      { type: 'DELETE', snapshot: 3 },
      forget('s2'),
      cbt(3, 9), // a write to a writable snapshot's era, after its interval was merged
    ];
    for (const r of more) apply(cat, r);
    const again = replay([...recs, ...more], CHUNK);
    expect(again.bookmarks).toEqual(cat.bookmarks);
    for (const from of [3, 4])
      for (const to of [4, Number.POSITIVE_INFINITY]) {
        if (to <= from) continue;
        expect(changed(again, from, to)).toEqual(changed(cat, from, to));
      }
  });

  it('round-trips through the journal encoding', () => {
    const rec: JournalRecord = { type: 'FORGET', device: 0xfffffffe, name: 'daily-2026.12.01_x:y' };
    const buf = encodeRecord(rec, 42);
    expect(buf.readUInt16LE(4)).toBe(16);
    expect(decodeRecord(buf, 0)).toEqual({ record: rec, seq: 42, size: buf.length });
  });
});
