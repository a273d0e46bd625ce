/**
 * The catalog's one transition, `apply(catalog, record)`: what each record type does and what
 * it asks the runtime to do (effects), that concurrent records give the same state in either
 * order, and that a replay of what a run committed is exactly the state that run had in memory.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { NbdsnapError } from '../../../src/errors.ts';
import type { Catalog } from '../../../src/snapshot/catalog.ts';
import { copyOf } from '../../../src/snapshot/exception-table.ts';
import { apply, replay } from '../../../src/snapshot/transition.ts';
import type { JournalRecord } from '../../../src/store/records.ts';
import { stampedData } from '../../helpers/stamps.ts';
import { CHUNK, Harness } from './harness.ts';

const DEVICE = { type: 'DEVICE', device: 1, size: 16 * CHUNK, name: 'a' } as const;
const snapshotRecord = (name: string, ...members: [number, number, number][]): JournalRecord => ({
  type: 'SNAPSHOT',
  created: 1000,
  name,
  members: members.map(([snapshot, device, seq]) => ({ snapshot, device, seq, writable: true })),
});

/** A catalog with device 1 ("a") and the given records applied. */
function catalog(...records: JournalRecord[]): Catalog {
  return replay([DEVICE, ...records], CHUNK);
}

const names = (snaps: { name: string }[]) => snaps.map((s) => s.name);

describe('each record type', () => {
  it('DEVICE adds a device; the same id twice is a damaged journal', () => {
    const cat = catalog({ type: 'DEVICE', device: 4, size: CHUNK * 3 + 5, name: 'b' });
    expect(cat.originNamed('b')).toMatchObject({ id: 4, size: CHUNK * 3 + 5, chunkSize: CHUNK });
    expect(cat.nextDeviceId()).toBe(5);
    expect(() => apply(cat, DEVICE)).toThrow(NbdsnapError);
  });

  it('SNAPSHOT takes a consistency group, advances the counters, and records the points', () => {
    const cat = catalog({ type: 'DEVICE', device: 2, size: CHUNK, name: 'b' });
    const fx = apply(cat, snapshotRecord('g', [7, 1, 10], [8, 2, 11]));
    expect(names(fx.created)).toEqual(['g', 'g']);
    expect(fx.created.map((s) => s.origin.name)).toEqual(['a', 'b']);
    expect(cat.nextSnapshotId).toBe(9);
    expect(cat.nextSeq).toBe(12);
    expect(cat.snapshots.get(7)).toMatchObject({ state: 'valid', seq: 10, writable: true, created: 1000 });
    expect(cat.originNamed('a')?.live.map((s) => s.id)).toEqual([7]);
    expect(cat.bookmarks.get(2)).toEqual(new Map([['g', 11]]));
  });

  it('SNAPSHOT of an unknown device is refused whole', () => {
    const cat = catalog();
    expect(() => apply(cat, snapshotRecord('g', [1, 1, 1], [2, 9, 2]))).toThrow(/unknown device 9/);
    expect(cat.snapshots.size).toBe(0);
    expect(cat.originNamed('a')?.snapshots).toEqual([]);
  });

  it('EXCEPTION adds a copy; one nobody reads any more is freed at once', () => {
    const cat = catalog(snapshotRecord('s', [1, 1, 1]));
    expect(apply(cat, { type: 'EXCEPTION', device: 1, seq: 1, chunk: 3, slot: 20, crc: 0 }).freed).toEqual([]);
    expect(cat.originNamed('a')?.table.find(3, 1)?.slot).toBe(20);
    apply(cat, { type: 'DELETE', snapshot: 1 });
    // A copy for the deleted snapshot committed after its DELETE (they raced): freed.
    expect(apply(cat, { type: 'EXCEPTION', device: 1, seq: 1, chunk: 4, slot: 21, crc: 0 }).freed).toEqual([21]);
    expect(cat.originNamed('a')?.table.size).toBe(0);
    expect(apply(cat, { type: 'EXCEPTION', device: 9, seq: 1, chunk: 4, slot: 22, crc: 0 }).freed).toEqual([22]);
  });

  it('PRIVATE gives a writable snapshot its own chunk; for an invalid or unknown one it is freed', () => {
    const cat = catalog(snapshotRecord('s', [1, 1, 1]));
    expect(apply(cat, { type: 'PRIVATE', snapshot: 1, chunk: 2, slot: 30, crc: 0 }).freed).toEqual([]);
    expect(new Map(cat.snapshots.get(1)?.privateChunks)).toEqual(new Map([[2, copyOf(30, 0)]]));
    expect(apply(cat, { type: 'PRIVATE', snapshot: 5, chunk: 2, slot: 31, crc: 0 }).freed).toEqual([31]);
    apply(cat, { type: 'INVALID', snapshot: 1, reason: 'x' });
    expect(apply(cat, { type: 'PRIVATE', snapshot: 1, chunk: 3, slot: 32, crc: 0 }).freed).toEqual([32]);
  });

  it('PRIVATE of a chunk again (redirect-on-write) keeps the new checksum and frees the old slot', () => {
    const cat = catalog(snapshotRecord('s', [1, 1, 1]));
    apply(cat, { type: 'PRIVATE', snapshot: 1, chunk: 2, slot: 30, crc: 7 });
    expect(apply(cat, { type: 'PRIVATE', snapshot: 1, chunk: 2, slot: 31, crc: 8 }).freed).toEqual([30]);
    expect(new Map(cat.snapshots.get(1)?.privateChunks)).toEqual(new Map([[2, copyOf(31, 8)]]));
    expect([...cat.usedSlots()]).toEqual([31]);
  });

  it('LOST marks the copy in that slot lost (shared or private), frees nothing; an unknown slot changes nothing', () => {
    const cat = catalog(
      snapshotRecord('s', [1, 1, 1]),
      { type: 'EXCEPTION', device: 1, seq: 1, chunk: 3, slot: 20, crc: 5 },
      { type: 'PRIVATE', snapshot: 1, chunk: 4, slot: 21, crc: 6 },
    );
    const snap = cat.snapshots.get(1);
    const table = cat.originNamed('a')?.table;
    if (snap === undefined || table === undefined) throw new Error('not applied');
    expect(apply(cat, { type: 'LOST', device: 1, chunk: 3, slot: 20 }).freed).toEqual([]);
    expect(apply(cat, { type: 'LOST', device: 1, chunk: 4, slot: 21 }).freed).toEqual([]);
    expect(apply(cat, { type: 'LOST', device: 1, chunk: 3, slot: 99 }).freed).toEqual([]);
    expect(apply(cat, { type: 'LOST', device: 9, chunk: 3, slot: 20 }).freed).toEqual([]);
    expect(table.resolve(3, snap)).toMatchObject({ from: 'store', slot: 20, copy: { lost: true } });
    expect(table.resolve(4, snap)).toMatchObject({ from: 'store', slot: 21, private: true, copy: { lost: true } });
    expect([...cat.usedSlots()].sort((a, b) => a - b)).toEqual([20, 21]);
  });

  it('INVALID frees what only that snapshot needed, drops its scheduled merge, keeps its first reason', () => {
    const cat = catalog(
      snapshotRecord('old', [1, 1, 1]),
      snapshotRecord('new', [2, 1, 2]),
      { type: 'EXCEPTION', device: 1, seq: 1, chunk: 0, slot: 10, crc: 0 }, // read by old
      { type: 'EXCEPTION', device: 1, seq: 2, chunk: 1, slot: 11, crc: 0 }, // read by old and new
      { type: 'EXCEPTION', device: 1, seq: 2, chunk: 0, slot: 12, crc: 0 }, // read by new
      { type: 'PRIVATE', snapshot: 2, chunk: 5, slot: 13, crc: 0 },
      { type: 'MERGE', snapshot: 2, deferred: true },
    );
    const snap = cat.snapshots.get(2);
    expect(snap?.mergeScheduled).toBe(true);
    const fx = apply(cat, { type: 'INVALID', snapshot: 2, reason: 'difference store full' });
    expect(names(fx.invalidated)).toEqual(['new']);
    expect(fx.freed.sort((a, b) => a - b)).toEqual([12, 13]);
    expect(snap).toMatchObject({ state: 'invalid', reason: 'difference store full', mergeScheduled: false });
    expect(snap?.privateChunks.size).toBe(0);
    expect(cat.merges.has(2)).toBe(false);
    expect(cat.originNamed('a')?.live.map((s) => s.name)).toEqual(['old']);
    expect(apply(cat, { type: 'INVALID', snapshot: 2, reason: 'later' })).toMatchObject({ invalidated: [], freed: [] });
    expect(snap?.reason).toBe('difference store full');
  });

  it('DELETE removes the snapshot, frees its space, and keeps its change-tracking point', () => {
    const cat = catalog(
      { type: 'CBT_GEN', device: 1, blockSize: CHUNK, generation: 'g1' },
      snapshotRecord('s', [1, 1, 1]),
      { type: 'EXCEPTION', device: 1, seq: 1, chunk: 0, slot: 10, crc: 0 },
      { type: 'PRIVATE', snapshot: 1, chunk: 1, slot: 11, crc: 0 },
    );
    const snap = cat.snapshots.get(1);
    const fx = apply(cat, { type: 'DELETE', snapshot: 1 });
    expect(fx.removed).toEqual([snap]);
    expect(fx.freed.sort((a, b) => a - b)).toEqual([10, 11]);
    expect(snap).toMatchObject({ state: 'invalid', reason: 'deleted' }); // open connections answer EIO
    expect(cat.snapshots.size).toBe(0);
    expect(cat.originNamed('a')?.snapshots).toEqual([]);
    expect([...cat.usedSlots()]).toEqual([]);
    expect(cat.bookmarks.get(1)).toEqual(new Map([['s', 1]]));
    expect(apply(cat, { type: 'DELETE', snapshot: 1 })).toMatchObject({ removed: [], freed: [] });
  });

  it('MERGE fixes the chunks to merge at its record; later copies do not change them', () => {
    const cat = catalog(
      snapshotRecord('m', [1, 1, 1]),
      { type: 'EXCEPTION', device: 1, seq: 1, chunk: 4, slot: 10, crc: 0 },
      { type: 'PRIVATE', snapshot: 1, chunk: 6, slot: 11, crc: 0 },
      { type: 'MERGE', snapshot: 1, deferred: true },
    );
    expect(cat.merges.get(1)).toEqual({ deferred: true, merged: new Set(), chunks: undefined });
    const fx = apply(cat, { type: 'MERGE', snapshot: 1, deferred: false });
    expect(names(fx.merging)).toEqual(['m']);
    expect(cat.snapshots.get(1)).toMatchObject({ state: 'merging', mergeScheduled: false });
    expect(cat.originNamed('a')?.live).toEqual([]);
    expect(cat.originNamed('a')?.readers.map((s) => s.name)).toEqual(['m']); // its copies are kept
    // A newer snapshot's copy of chunk 2 (the merged snapshot would resolve it too).
    apply(cat, snapshotRecord('n', [2, 1, 2]));
    apply(cat, { type: 'EXCEPTION', device: 1, seq: 2, chunk: 2, slot: 12, crc: 0 });
    expect(cat.merges.get(1)?.chunks).toEqual([4, 6]);
    apply(cat, { type: 'MERGED', snapshot: 1, chunk: 4, count: 1 });
    expect(cat.merges.get(1)?.merged).toEqual(new Set([4]));
    // Finished: the merged snapshot is deleted; the merge is forgotten.
    apply(cat, { type: 'DELETE', snapshot: 1 });
    expect(cat.merges.size).toBe(0);
    // A merge of an invalid snapshot is never begun.
    apply(cat, { type: 'INVALID', snapshot: 2, reason: 'x' });
    expect(apply(cat, { type: 'MERGE', snapshot: 2, deferred: false }).merging).toEqual([]);
    expect(cat.snapshots.get(2)?.state).toBe('invalid');
  });

  it('CBT_GEN starts a tracker and forgets earlier points; CBT marks blocks in an era', () => {
    const cat = catalog(snapshotRecord('s', [1, 1, 1]));
    apply(cat, { type: 'CBT_GEN', device: 1, blockSize: 2 * CHUNK, generation: 'gen' });
    expect(cat.bookmarks.has(1)).toBe(false);
    const tracker = cat.trackers.get(1);
    expect(tracker).toMatchObject({ generation: 'gen', blockSize: 2 * CHUNK, blockCount: 8 });
    apply(cat, { type: 'CBT', device: 1, era: 2, block: 3, count: 2 });
    expect([...(tracker?.changed(1).runs() ?? [])]).toEqual([[3, 2]]);
    expect([...(tracker?.changed(2).runs() ?? [])]).toEqual([]);
  });

  it('COMMIT and record types it does not know change nothing', () => {
    const cat = catalog(snapshotRecord('s', [1, 1, 1]));
    const before = replay([DEVICE, snapshotRecord('s', [1, 1, 1])], CHUNK);
    apply(cat, { type: 'COMMIT', firstSeq: 1, count: 1, chain: 0 });
    apply(cat, { type: 'CLEAN', at: 1 });
    apply(cat, { type: 'LOST', device: 1, chunk: 0, slot: 3 } as unknown as JournalRecord);
    expect(cat).toEqual(before);
  });
});

describe('records that race at run time', () => {
  const base: JournalRecord[] = [
    snapshotRecord('a1', [1, 1, 1]),
    snapshotRecord('a2', [2, 1, 2]),
    { type: 'EXCEPTION', device: 1, seq: 1, chunk: 0, slot: 10, crc: 0 },
    { type: 'PRIVATE', snapshot: 2, chunk: 7, slot: 14, crc: 0 },
  ];
  const racing: JournalRecord[][] = [
    [
      { type: 'EXCEPTION', device: 1, seq: 2, chunk: 1, slot: 11, crc: 0 },
      { type: 'DELETE', snapshot: 2 },
    ],
    [
      { type: 'EXCEPTION', device: 1, seq: 2, chunk: 1, slot: 11, crc: 0 },
      { type: 'INVALID', snapshot: 2, reason: 'store full' },
    ],
    [
      { type: 'PRIVATE', snapshot: 2, chunk: 3, slot: 12, crc: 0 },
      { type: 'DELETE', snapshot: 2 },
    ],
    [
      { type: 'INVALID', snapshot: 1, reason: 'x' },
      { type: 'INVALID', snapshot: 2, reason: 'x' },
    ],
  ];
  it.each(racing.map((r) => [r.map((x) => x.type).join(' vs '), r] as const))(
    '%s: the same state in either order',
    (_name, [x, y]) => {
      const one = catalog(...base, x as JournalRecord, y as JournalRecord);
      const other = catalog(...base, y as JournalRecord, x as JournalRecord);
      expect(other).toEqual(one);
      expect(new Set(other.usedSlots())).toEqual(new Set(one.usedSlots()));
    },
  );
});

describe('replay of a recorded run', () => {
  let h: Harness | undefined;
  afterEach(() => {
    vi.restoreAllMocks();
    h?.close();
  });

  it('equals the state the run had in memory', async () => {
    const run = new Harness({ devices: { a: 64 * CHUNK, b: 32 * CHUNK }, slots: 120, cbtBlockSize: CHUNK });
    h = run;
    await run.start();
    const m = run.manager;
    const write = (dev: string, chunk: number, n: number, seed: number) =>
      run.device(dev).write(chunk * CHUNK + 100, stampedData(seed, chunk * CHUNK + 100, n * CHUNK - 200), false);

    await m.createSnapshot(['a', 'b'], 'g1', false);
    await Promise.all([write('a', 0, 10, 1), write('b', 5, 3, 2)]);
    await m.createSnapshot(['a'], 'w', true);
    await run.device('a@w').write(20 * CHUNK + 5, stampedData(3, 20 * CHUNK + 5, CHUNK + 10), false);
    await write('a', 19, 4, 4); // chunk 20: g1 needs a copy, w has its own
    await m.createSnapshot(['a'], 's3', false);
    await Promise.all([write('a', 0, 4, 5), write('a', 30, 2, 6)]);
    await m.deleteSnapshot('a', 'g1');
    await m.startMerge('a', 's3', false);
    await write('a', 2, 1, 7); // a client write during the merge
    await run.mergesDone();
    await m.startMerge('b', 'g1', true); // scheduled for the next start
    await m.createSnapshot(['b'], 'full', false);
    while (run.store.allocate() !== undefined) {
      // fill the store: the next copy has no room
    }
    await write('b', 0, 2, 8); // overflow: g1 and full are invalidated
    expect(m.list().map((s) => `${s.export}:${s.state}`)).toEqual(['b@g1:invalid', 'a@w:valid', 'b@full:invalid']);
    const types = new Set(run.committed.map((r) => r.type));
    for (const t of ['DEVICE', 'SNAPSHOT', 'EXCEPTION', 'PRIVATE', 'DELETE', 'INVALID', 'MERGE', 'MERGED'])
      expect(types).toContain(t);
    expect(types).toContain('CBT_GEN');
    expect(types).toContain('CBT');

    const replayed = replay(run.committed, CHUNK);
    expect(replayed).toEqual(m.catalog);
    expect(new Set(replayed.usedSlots())).toEqual(new Set(m.catalog.usedSlots()));
  });
  it('a damaged copy: the read answers EIO, LOST goes through the recorder, replay marks the same copy lost', async () => {
    const run = new Harness({ devices: { a: 16 * CHUNK }, slots: 40 });
    h = run;
    await run.start();
    const m = run.manager;
    await m.createSnapshot(['a'], 's', false);
    await run.device('a').write(3 * CHUNK, Buffer.alloc(CHUNK, 7), false);
    const snap = m.find('a', 's');
    const copy = snap.origin.table.find(3, snap.seq);
    if (copy === undefined) throw new Error('no copy of chunk 3');
    await run.store.space.writeSlot(copy.slot, Buffer.alloc(16, 0xee)); // damage it
    const read = () => run.device('a@s').read(3 * CHUNK + 512, 512);
    await expect(read()).rejects.toMatchObject({ code: 'EIO' });
    const lost = () => run.committed.filter((r) => r.type === 'LOST');
    expect(lost()).toEqual([{ type: 'LOST', device: snap.origin.id, chunk: 3, slot: copy.slot }]);
    expect(snap.origin.table.find(3, snap.seq)?.lost).toBe(true);
    expect(run.events.filter((e) => e.type === 'damaged')).toMatchObject([
      { device: 'a', chunk: 3, slot: copy.slot, snapshots: ['a@s'] },
    ]);
    expect(m.list().map((s) => s.damaged)).toEqual([1]);
    // Read again: EIO without reading, and no second record.
    await expect(read()).rejects.toMatchObject({ code: 'EIO' });
    expect(lost()).toHaveLength(1);
    expect(replay(run.committed, CHUNK)).toEqual(m.catalog);
  });
});
