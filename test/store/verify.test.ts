/**
 * Unit tests, no server: the checksum records (EXCEPTION and PRIVATE with `crc`, LOST) round-trip,
 * and `verifyBatchData` compares a batch's chunk data with its checksums, over the chunk length
 * (short for a device's last chunk), finding device sizes in the replayed records.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checksum } from '../../src/store/checksum.ts';
import { decodeRecord, encodeRecord, type JournalRecord } from '../../src/store/records.ts';
import { StoreSpace } from '../../src/store/space.ts';
import { DiffStore } from '../../src/store/store.ts';
import { chunkLengths, readVerified, verifyBatchData } from '../../src/store/verify.ts';
import { pattern } from '../helpers/clients.ts';
import { tempDir } from '../helpers/server.ts';
import { makeSparse } from '../helpers/snapshots.ts';

const CS = 4096;
const dir = tempDir('nbdsnap-verify-');
const space = new StoreSpace(CS, 0);
afterAll(() => {
  space.close();
  dir.cleanup();
});

describe('checksum records', () => {
  it('round-trip, with checksums over 2^31', () => {
    const recs: JournalRecord[] = [
      { type: 'EXCEPTION', device: 3, seq: 7, chunk: 2 ** 33 + 5, slot: 99, crc: 0xffffffff },
      { type: 'PRIVATE', snapshot: 4, chunk: 12, slot: 100, crc: 0x80000001 },
      { type: 'LOST', device: 3, chunk: 2 ** 33 + 5, slot: 99 },
    ];
    for (const [i, rec] of recs.entries()) {
      const r = decodeRecord(encodeRecord(rec, 10 + i), 0);
      expect(r).toMatchObject({ record: rec, seq: 10 + i });
    }
  });

  it('checksum continues with a seed', () => {
    const a = pattern(1000, 1);
    const b = pattern(3000, 2);
    expect(checksum(b, checksum(a))).toBe(checksum(Buffer.concat([a, b])));
    expect(checksum(a)).toBeGreaterThanOrEqual(0);
  });
});

describe('verifyBatchData', () => {
  const path = join(dir.path, 'store.img');
  writeFileSync(path, Buffer.alloc(16 * CS));
  space.add({ path, start: 0, length: 16 * CS });
  // Device 1: two whole chunks and a short last one of 1000 bytes.
  const size = 2 * CS + 1000;
  const full = pattern(CS, 5);
  const tail = pattern(CS, 6); // a whole slot is written; only its first 1000 bytes are the chunk
  const before: JournalRecord[] = [
    { type: 'DEVICE', device: 1, size, name: 'disk' },
    { type: 'SNAPSHOT', created: 0, name: 's', members: [{ snapshot: 8, device: 1, seq: 1, writable: true }] },
  ];
  const batch: JournalRecord[] = [
    { type: 'EXCEPTION', device: 1, seq: 1, chunk: 0, slot: 3, crc: checksum(full) },
    { type: 'PRIVATE', snapshot: 8, chunk: 2, slot: 4, crc: checksum(tail.subarray(0, 1000)) },
    { type: 'LOST', device: 1, chunk: 0, slot: 9 },
  ];
  const lengths = () => chunkLengths(before, batch, CS);

  it('accepts data that matches, over the chunk length only', async () => {
    await space.writeSlot(3, full);
    await space.writeSlot(4, tail);
    expect(await verifyBatchData(space, batch, lengths())).toBe(true);
    await space.writeSlot(4, Buffer.from([0xee]), 2000); // past the short chunk: not its data
    expect(await verifyBatchData(space, batch, lengths())).toBe(true);
  });

  it('refuses a flipped byte in any chunk of the batch', async () => {
    await space.writeSlot(4, Buffer.from([(tail[999] as number) ^ 1]), 999);
    expect(await verifyBatchData(space, batch, lengths())).toBe(false);
    await space.writeSlot(4, tail.subarray(999, 1000), 999);
    expect(await verifyBatchData(space, batch, lengths())).toBe(true);
    await space.writeSlot(3, Buffer.from([(full[0] as number) ^ 0x80]), 0);
    expect(await verifyBatchData(space, batch, lengths())).toBe(false);
    expect(await readVerified(space, 3, checksum(full), CS)).toBeUndefined();
    await space.writeSlot(3, full);
    expect((await readVerified(space, 3, checksum(full), CS))?.equals(full)).toBe(true);
  });

  it('does not check a record whose device or snapshot it does not know (reads check it later)', async () => {
    const unknown: JournalRecord = { type: 'PRIVATE', snapshot: 77, chunk: 0, slot: 5, crc: 1 };
    const wrong: JournalRecord = { ...(batch[0] as Extract<JournalRecord, { type: 'EXCEPTION' }>), crc: 2 };
    expect(await verifyBatchData(space, [unknown], chunkLengths(before, [unknown], CS))).toBe(true);
    expect(await verifyBatchData(space, [unknown, wrong], chunkLengths(before, [unknown, wrong], CS))).toBe(false);
    expect(await verifyBatchData(space, [], chunkLengths(before, [], CS))).toBe(true);
  });

  it('does not check a copy whose slot may have been freed since (its readers gone, a private chunk rewritten)', async () => {
    // A copy made while snapshot 8 (seq 1) needed it, in the same batch as its DELETE: freed at
    // once, its slot may already hold a journal block or another copy.
    const gone: JournalRecord[] = [
      { type: 'EXCEPTION', device: 1, seq: 1, chunk: 1, slot: 6, crc: 123 },
      { type: 'DELETE', snapshot: 8 },
    ];
    expect(await verifyBatchData(space, gone, chunkLengths(before, gone, CS))).toBe(true);
    // A copy read by nobody: a newer snapshot (seq 5) came after it, the older one's reader range
    // is (1, 3] and no snapshot has a seq there.
    const more: JournalRecord[] = [
      ...before,
      { type: 'SNAPSHOT', created: 0, name: 't', members: [{ snapshot: 9, device: 1, seq: 5, writable: false }] },
      { type: 'EXCEPTION', device: 1, seq: 1, chunk: 1, slot: 7, crc: checksum(full) },
    ];
    const orphan: JournalRecord[] = [{ type: 'EXCEPTION', device: 1, seq: 3, chunk: 1, slot: 6, crc: 123 }];
    expect(chunkLengths(more, orphan, CS)(orphan[0] as Extract<JournalRecord, { type: 'EXCEPTION' }>)).toBeUndefined();
    const read: JournalRecord[] = [{ type: 'EXCEPTION', device: 1, seq: 5, chunk: 1, slot: 6, crc: 123 }];
    expect(await verifyBatchData(space, read, chunkLengths(more, read, CS))).toBe(false);
    // A private chunk written again later in the batch: only the newest is checked.
    const rewritten: JournalRecord[] = [
      { type: 'PRIVATE', snapshot: 8, chunk: 2, slot: 6, crc: 123 },
      { type: 'PRIVATE', snapshot: 8, chunk: 2, slot: 4, crc: checksum(tail.subarray(0, 1000)) },
    ];
    expect(await verifyBatchData(space, rewritten, chunkLengths(before, rewritten, CS))).toBe(true);
  });

  it('sizes chunks from DEVICE and SNAPSHOT records', () => {
    const recs: Extract<JournalRecord, { type: 'EXCEPTION' | 'PRIVATE' }>[] = [
      { type: 'EXCEPTION', device: 1, seq: 1, chunk: 1, slot: 0, crc: 0 },
      { type: 'EXCEPTION', device: 1, seq: 1, chunk: 2, slot: 0, crc: 0 },
      { type: 'PRIVATE', snapshot: 8, chunk: 2, slot: 0, crc: 0 },
      { type: 'EXCEPTION', device: 2, seq: 1, chunk: 0, slot: 0, crc: 0 },
    ];
    const len = chunkLengths(before, recs, CS);
    expect(recs.map((r) => len(r))).toEqual([CS, 1000, 1000, undefined]);
  });
});

describe('the store verifies the data of the last batch at open (one sync per batch)', () => {
  const device: JournalRecord = { type: 'DEVICE', device: 1, size: 16 * CS, name: 'd' };
  const snap: JournalRecord = {
    type: 'SNAPSHOT',
    created: 0,
    name: 's',
    members: [{ snapshot: 1, device: 1, seq: 1, writable: false }],
  };
  const types = (records: JournalRecord[]) => records.map((r) => r.type);

  it('after a crash, keeps a last batch whose data is not what it records and names the copy; read-only writes nothing', async () => {
    const ranges = [StoreSpace.resolve(makeSparse(join(dir.path, 'crash.img'), 128 * 1024 + 64 * CS))];
    const first = await DiffStore.open(ranges, { transient: false, chunkSize: CS });
    await first.store.commit([device, snap]);
    const good = pattern(CS, 5);
    const slot = first.store.allocate() as number;
    await first.store.writeSlot(slot, good);
    await first.store.commit([{ type: 'EXCEPTION', device: 1, seq: 1, chunk: 2, slot, crc: checksum(good) }]);
    first.store.space.close(); // a crash: no CLEAN batch
    const kept = await DiffStore.open(ranges, { transient: false });
    expect(types(kept.records)).toEqual(['DEVICE', 'SNAPSHOT', 'EXCEPTION']);
    expect(kept.report?.reason).toBe('end');
    expect(kept.suspect).toEqual([]);
    // The next batch records data that never reached its slot (or that was damaged since): the
    // batch is kept (it may have been acknowledged) and the copy is handed over as suspect.
    const bad = kept.store.allocate() as number;
    const record = { type: 'EXCEPTION' as const, device: 1, seq: 1, chunk: 3, slot: bad, crc: 0x1234 };
    await kept.store.commit([record]);
    kept.store.space.close();
    const image = readFileSync(ranges[0]?.path as string);
    const ro = await DiffStore.open(ranges, { transient: false, readOnly: true });
    expect(types(ro.records)).toEqual(['DEVICE', 'SNAPSHOT', 'EXCEPTION', 'EXCEPTION']);
    expect(ro.suspect).toEqual([record]);
    await ro.store.close();
    expect(readFileSync(ranges[0]?.path as string).equals(image)).toBe(true);
    const again = await DiffStore.open(ranges, { transient: false });
    expect(types(again.records)).toEqual(['DEVICE', 'SNAPSHOT', 'EXCEPTION', 'EXCEPTION']);
    expect(again.suspect).toEqual([record]);
    await again.store.close();
    const after = await DiffStore.open(ranges, { transient: false });
    expect(after.report?.reason).toBe('clean');
    expect(after.suspect).toEqual([]); // not asked after a clean stop: reads check every copy
    await after.store.close();
  });
});
