/**
 * The store's checkpoint writer (src/store/checkpoint-writer.ts, `DiffStore.checkpoint`): a new
 * journal of the next generation, switched to by range 0's label; the old journal's slots freed;
 * a block of an older generation never followed; a checkpoint that cannot be written leaves the
 * old journal in use; `store check` reads a checkpointed store.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkHuman, checkStore } from '../../src/store/check.ts';
import { writeCheckpoint } from '../../src/store/checkpoint-writer.ts';
import { chainValue } from '../../src/store/journal-scan.ts';
import { encodeBlockHeader, encodeRecord, encodeRecordInto, type JournalRecord } from '../../src/store/records.ts';
import { StoreSpace } from '../../src/store/space.ts';
import { DiffStore } from '../../src/store/store.ts';
import { tempDir } from '../helpers/server.ts';
import { makeSparse } from '../helpers/snapshots.ts';

const CS = 4096;
const SLOTS = 200;
const dir = tempDir('nbdsnap-checkpoint-');
afterAll(() => dir.cleanup());

let files = 0;
function ranges() {
  return [StoreSpace.resolve(makeSparse(join(dir.path, `s${files++}.img`), 128 * 1024 + SLOTS * CS))];
}

const device: JournalRecord = { type: 'DEVICE', device: 1, size: 1 << 30, name: 'disk' };
/** `n` CBT records (about 40 bytes each: 100 of them fill a 4 KiB block). */
const marks = (n: number, era = 1): JournalRecord[] =>
  Array.from({ length: n }, (_, i) => ({ type: 'CBT', device: 1, era, block: 2 * i, count: 1 }));
const state: JournalRecord[] = [
  { type: 'CHECKPOINT', nextSnapshotId: 3, nextSeq: 3, at: 1 },
  device,
  ...marks(1000, 2), // spans ten blocks and several batches
];

/** A store holding a history of `batches` batches, open. */
async function withHistory(rs = ranges(), batches = 80) {
  const { store } = await DiffStore.open(rs, { transient: false, chunkSize: CS });
  await store.commit([device]);
  for (let b = 0; b < batches; b++) await store.commit(marks(20, b + 1));
  return store;
}

const types = (records: JournalRecord[]) => records.map((r) => r.type);

describe('a checkpoint', () => {
  it('replaces the journal: the next start replays the checkpoint and what followed it', async () => {
    const rs = ranges();
    const store = await withHistory(rs);
    const before = store.journalBytes;
    const free = store.freeSlots;
    const written = await store.checkpoint(state);
    expect(written?.records).toBe(state.length);
    expect(store.journalBytes).toBe(written?.bytes);
    expect(store.journalBytes).toBeLessThan(before);
    expect(store.freeSlots).toBe(free + (before - store.journalBytes) / CS); // the old journal's slots are free
    await store.commit([{ type: 'CBT', device: 1, era: 9, block: 7, count: 1 }]);
    store.space.close(); // a crash

    const again = await DiffStore.open(rs, { transient: false });
    expect(again.report).toMatchObject({ generation: 1, checkpoint: true, reason: 'end' });
    expect(again.records).toEqual([...state, { type: 'CBT', device: 1, era: 9, block: 7, count: 1 }]);
    // A second checkpoint: generation 2, then a clean stop and a start.
    await again.store.checkpoint(state);
    await again.store.close();
    const third = await DiffStore.open(rs, { transient: false });
    expect(third.report).toMatchObject({ generation: 2, checkpoint: true, reason: 'clean' });
    expect(third.records).toEqual(state);
    const report = await (async () => {
      await third.store.close();
      return checkStore(rs);
    })();
    expect(report.clean).toBe(true);
    expect(report.journal.report).toMatchObject({ generation: 2, checkpoint: true });
    expect(checkHuman(report)).toMatch(/generation 2, starts with a checkpoint/);
  });

  it('written but not named by the label (a crash before the switch): the old journal is read', async () => {
    const rs = ranges();
    const store = await withHistory(rs, 5);
    await writeCheckpoint(store.space, state, 1, 2);
    store.space.close();
    const again = await DiffStore.open(rs, { transient: false });
    expect(again.report).toMatchObject({ generation: 0, checkpoint: false });
    expect(types(again.records).slice(0, 2)).toEqual(['DEVICE', 'CBT']);
    expect(again.records).toHaveLength(1 + 5 * 20);
    await again.store.close();
  });

  it('a store too full for it: skipped (ENOSPC), the old journal goes on', async () => {
    const rs = ranges();
    const store = await withHistory(rs, 5);
    const taken: number[] = [];
    while (store.freeSlots > 3) taken.push(store.allocate() as number);
    const free = store.freeSlots;
    await expect(store.checkpoint(state)).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(store.freeSlots).toBe(free); // what it took was given back
    expect(store.failure).toBeUndefined();
    await store.commit(marks(3, 40));
    await store.close();
    const again = await DiffStore.open(rs, { transient: false });
    expect(again.report).toMatchObject({ generation: 0, reason: 'clean' });
    expect(again.records).toHaveLength(1 + 5 * 20 + 3);
    await again.store.close();
  });

  it('needs the journal idle', async () => {
    const store = await withHistory(ranges(), 1);
    const commit = store.commit(marks(5, 50));
    await expect(store.checkpoint(state)).rejects.toMatchObject({ code: 'EINVAL' });
    await commit;
    await store.close();
  });
});

describe('encoding into a block', () => {
  it('gives the bytes encodeRecord gives, and 0 when the record does not fit', () => {
    const records: JournalRecord[] = [
      { type: 'EXCEPTION', device: 3, seq: 7, chunk: 2 ** 40 + 5, slot: 123456, crc: 0xfedcba98 },
      { type: 'EXCEPTION', device: 1, seq: 0xffffffff, chunk: 0, slot: 0, crc: -5 },
      { type: 'CBT', device: 2, era: 9, block: 2 ** 35 + 1, count: 0xffffffff },
      { type: 'SNAPSHOT', created: 5, name: 'x', members: [{ snapshot: 1, device: 1, seq: 1, writable: true }] },
      { type: 'COMMIT', firstSeq: 4, count: 2, chain: 77 },
    ];
    for (const [i, rec] of records.entries()) {
      const want = encodeRecord(rec, 1000 + i);
      const block = Buffer.alloc(want.length + 16);
      expect(encodeRecordInto(block, 16, rec, 1000 + i)).toBe(want.length);
      expect(block.subarray(16)).toEqual(want);
      expect(encodeRecordInto(Buffer.alloc(want.length + 15), 16, rec, 1)).toBe(0);
    }
  });
});

describe('the journal generation', () => {
  /**
   * A checkpointed store whose journal ends in block `stop.block`; then a block of generation
   * `generation` continuing it with one batch is written where the chain goes next.
   */
  async function withBlockAfterEnd(generation: number) {
    const rs = ranges();
    const store = await withHistory(rs, 3);
    await store.checkpoint(state);
    await store.commit(marks(2, 60));
    store.space.close(); // a crash: no clean-stop mark to check
    const ro = await DiffStore.open(rs, { transient: false, readOnly: true });
    const stop = ro.report?.stop as { block: number; slot: number; offset: number; seq: number };
    const next = (ro.report?.slots ?? []).at(-1) as number;
    const chain = (ro.store as unknown as { journal: { chain: number } }).journal.chain;
    await ro.store.close();
    // Continue the journal in the next block, as a writer of `generation` would have.
    const block = Buffer.alloc(CS);
    encodeBlockHeader({ index: stop.block + 1, next: 150, firstSeq: stop.seq, generation }).copy(block, 0);
    const rec = encodeRecord({ type: 'CBT', device: 1, era: 77, block: 1, count: 1 }, stop.seq);
    rec.copy(block, 32);
    const commit = { type: 'COMMIT' as const, firstSeq: stop.seq, count: 1, chain: chainValue(chain, [rec]) };
    encodeRecord(commit, stop.seq + 1).copy(block, 32 + rec.length);
    const space = new StoreSpace(CS, 128 * 1024);
    space.add(rs[0] as StoreRange);
    const last = await space.readSlot(stop.slot, CS);
    last.fill(0xff, stop.offset); // the writer moved on to the next block
    await space.writeSlot(stop.slot, last);
    await space.writeSlot(next, block);
    await space.sync();
    space.close();
    return rs;
  }

  it('a block of the current generation continues the journal (the control)', async () => {
    const rs = await withBlockAfterEnd(1);
    const opened = await DiffStore.open(rs, { transient: false, readOnly: true });
    expect(opened.records.at(-1)).toEqual({ type: 'CBT', device: 1, era: 77, block: 1, count: 1 });
    await opened.store.close();
  });

  it('a block of an older generation where the chain goes on is damage, never followed', async () => {
    const rs = await withBlockAfterEnd(0);
    await expect(DiffStore.open(rs, { transient: false, readOnly: true })).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(/generation 0, not 1/),
    });
  });
});

type StoreRange = ReturnType<typeof StoreSpace.resolve>;
