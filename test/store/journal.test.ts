/**
 * The metadata journal without a server (test/store/journal-rig.ts): replay after a clean stop and
 * after a crash, group commit with one sync per batch, read errors, the chain, the last-batch
 * verifier, fail-stop. Torn tails and damage: journal-damage.test.ts.
 */
import { closeSync, ftruncateSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Journal } from '../../src/store/journal.ts';
import type { JournalRecord } from '../../src/store/records.ts';
import {
  batchRecords,
  build,
  CHUNK,
  changedBytes,
  changedSectors,
  junkFile,
  open,
  SECTOR,
  SIZES,
  TestSpace,
  tear,
} from './journal-rig.ts';

describe('journal', () => {
  it('returns exactly what was committed, after a clean stop and after a crash, and resumes', async () => {
    for (const clean of [true, false]) {
      const built = await build(SIZES, clean);
      const { records, report } = await open(built.path, built.first);
      expect(records).toEqual(built.batches.flat());
      expect(report.cleanStop).toBe(clean);
      expect(report.reason).toBe(clean ? 'clean' : 'end');
      expect(report.batches).toBe(SIZES.length + (clean ? 1 : 0));
      expect(report.blocks).toBeGreaterThan(4);
      // Resume: more batches after the reopen, then a clean stop.
      const space = new TestSpace(built.path);
      const again = await Journal.open(space, built.first);
      const more = [batchRecords(100, 5), batchRecords(101, 12)];
      await Promise.all(more.map((r) => again.journal.append(r)));
      await again.journal.close();
      await expect(again.journal.append(batchRecords(102, 1))).rejects.toMatchObject({ code: 'ESHUTDOWN' });
      space.close();
      const third = await open(built.path, built.first);
      expect(third.records).toEqual([...built.batches.flat(), ...more.flat()]);
      expect(third.report.cleanStop).toBe(true);
    }
  });
  it('groups appends made while a batch is committed, in order, one sync per batch', async () => {
    const space = new TestSpace(junkFile());
    const journal = await Journal.create(space);
    const first = journal.slots[0] as number;
    const syncs0 = space.syncs;
    await journal.append(batchRecords(0, 3));
    expect(space.syncs - syncs0).toBe(1);
    const waves = Array.from({ length: 30 }, (_, i) => batchRecords(i + 1, 2));
    await Promise.all(waves.map((r) => journal.append(r)));
    space.close();
    const { records, report } = await open(space.path, first);
    expect(records).toEqual([...batchRecords(0, 3), ...waves.flat()]);
    expect(report.batches).toBeLessThan(31); // grouped
  });
  it('starts a batch one turn after the first record: appends a few microtasks apart share one sync', async () => {
    const space = new TestSpace(junkFile());
    const journal = await Journal.create(space);
    const first = journal.slots[0] as number;
    const syncs0 = space.syncs;
    // As a first write after a snapshot: its change-tracking record at once, its copy's record
    // once the old chunk is read (a few microtasks later, in the same turn of the event loop).
    const tracked = journal.append(batchRecords(1, 1));
    for (let i = 0; i < 5; i++) await Promise.resolve();
    const copied = journal.append(batchRecords(2, 2));
    await Promise.all([tracked, copied]);
    expect(space.syncs - syncs0).toBe(1);
    space.close();
    const { records, report } = await open(space.path, first);
    expect(records).toEqual([...batchRecords(1, 1), ...batchRecords(2, 2)]);
    expect(report.batches).toBe(1);
  });

  it('names the block and slot of a read error (EIO, short read) instead of ending the journal there', async () => {
    const built = await build(SIZES, true);
    const { report } = await open(built.path, built.first);
    const slot = report.slots[3] as number;
    const space = new TestSpace(built.path);
    space.failRead = (s) => s === slot;
    await expect(Journal.open(space, built.first)).rejects.toMatchObject({
      code: 'EIO',
      message: expect.stringContaining(`journal block 3 (store slot ${slot})`),
    });
    // Read-only too, and for the zeroed block after the end.
    space.clearAllocations();
    space.failRead = (s) => s === report.slots.at(-1);
    await expect(Journal.open(space, built.first, { readOnly: true })).rejects.toMatchObject({ code: 'EIO' });
    space.close();
    // A store file cut short in the middle of block 3: not "zeros, the end of the journal".
    const image = readFileSync(built.path);
    let at = -1;
    for (let p = 0; p < image.length && at < 0; p += SECTOR) {
      if (image.readUInt32LE(p) === 0x424a534e && image.readUInt32LE(p + 4) === 3) at = p;
    }
    expect(at).toBeGreaterThan(0);
    const cut = new TestSpace(built.path);
    const fd = openSync(built.path, 'r+');
    ftruncateSync(fd, at + CHUNK / 2);
    closeSync(fd);
    await expect(Journal.open(cut, built.first)).rejects.toMatchObject({
      code: 'EIO',
      message: expect.stringContaining('journal block 3'),
    });
    cut.close();
  });
  it('checks the chain: a batch spliced in from another journal is damage', async () => {
    const a = await build([3, 4, 5], false);
    // Another journal, same layout, other contents in batches 1 and 2 (same sizes).
    const other = (r: JournalRecord[]) =>
      r.map((x) => (x.type === 'DELETE' || x.type === 'INVALID' ? { ...x, snapshot: x.snapshot + 1 } : x));
    const space = new TestSpace(junkFile());
    space.record = true;
    const j = await Journal.create(space);
    await j.append(batchRecords(0, 3));
    await j.append(other(batchRecords(1, 4)));
    await j.append(other(batchRecords(2, 5)));
    space.close();
    expect(j.slots[0]).toBe(a.first);
    expect(space.images).toHaveLength(4);
    // Its batch 2 into a's file: every record decodes, seqs and counts fit; only the chain differs.
    const to = space.images[3] as Buffer;
    const changed = changedBytes(space.images[2] as Buffer, to);
    const mine = readFileSync(a.path);
    to.copy(mine, changed[0], changed[0], (changed.at(-1) as number) + 1);
    writeFileSync(a.path, mine);
    await expect(open(a.path, a.first)).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringContaining('chained checksum'),
    });
  });
  it('asks the verifier about the last batch after a crash only, and drops exactly that batch', async () => {
    const built = await build(SIZES, false);
    const seen: JournalRecord[][] = [];
    const priors: JournalRecord[][] = [];
    const fails = async (records: JournalRecord[], before: JournalRecord[]) => {
      seen.push(records);
      priors.push(before);
      return false;
    };
    const ro = await open(built.path, built.first, { verifyLastBatch: fails, readOnly: true });
    expect(seen).toEqual([built.batches.at(-1)]);
    // With the records of every batch before it (device sizes, what is still in use).
    expect(priors).toEqual([built.batches.slice(0, -1).flat()]);
    expect(ro.records).toEqual(built.batches.slice(0, -1).flat());
    expect(ro.report.reason).toBe('torn');
    // Read-only wrote nothing: a verifier that agrees gets everything.
    const ok = await open(built.path, built.first, { verifyLastBatch: async () => true });
    expect(ok.records).toEqual(built.batches.flat());
    expect(ok.report.reason).toBe('end');
    const dropped = await open(built.path, built.first, { verifyLastBatch: fails });
    expect(dropped.records).toEqual(built.batches.slice(0, -1).flat());
    // The dropped batch was zeroed: gone for good, and the batch before is not asked about again
    // unless it is the last one.
    const after = await open(built.path, built.first);
    expect(after.records).toEqual(built.batches.slice(0, -1).flat());
    expect(after.report.reason).toBe('end');

    // After a clean stop the verifier is not consulted.
    const clean = await build(SIZES, true);
    seen.length = 0;
    const c = await open(clean.path, clean.first, { verifyLastBatch: fails });
    expect(seen).toEqual([]);
    expect(c.records).toEqual(clean.batches.flat());
    expect(c.report.cleanStop).toBe(true);

    // Nor when a torn batch follows: the last whole batch's sync had returned.
    const torn = await build([...SIZES.slice(0, 10), 30], false);
    const n = torn.marks.length;
    const before = torn.images[torn.marks[n - 2] as number] as Buffer;
    const after2 = torn.images[torn.marks[n - 1] as number] as Buffer;
    writeFileSync(torn.path, tear(before, after2, changedSectors(before, after2).slice(0, 1)));
    seen.length = 0;
    const t = await open(torn.path, torn.first, { verifyLastBatch: fails });
    expect(seen).toEqual([]);
    expect(t.records).toEqual(torn.batches.slice(0, -1).flat());
    expect(t.report.reason).toBe('torn');
  });
  it('stops for good when a batch cannot be made durable, and writes no CLEAN after it', async () => {
    const space = new TestSpace(junkFile());
    const journal = await Journal.create(space);
    const first = journal.slots[0] as number;
    await journal.append(batchRecords(0, 2));
    space.failSync = true;
    await expect(journal.append(batchRecords(1, 2))).rejects.toMatchObject({ code: 'EIO' });
    space.failSync = false;
    await expect(journal.append(batchRecords(2, 2))).rejects.toMatchObject({ code: 'EIO' });
    await journal.close();
    space.close();
    const { report } = await open(space.path, first);
    expect(report.cleanStop).toBe(false);
  });
});
