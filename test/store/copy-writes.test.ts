/**
 * Copies written with the journal batch that records them (src/store/copy-writes.ts): copies,
 * records and sync in one job where the store allows (one local file, the native helper), the
 * copies first otherwise (a batch that starts a new journal block: with 4 KiB blocks, often).
 * After a reopen every record committed is there and every copy reads as written; a copy whose
 * write fails leaves out its own records only, and the journal goes on.
 */
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { native } from '../../src/block/native.ts';
import { NbdsnapError } from '../../src/errors.ts';
import { isCopyWriteFailure, type SlotData } from '../../src/store/copy-writes.ts';
import { Journal } from '../../src/store/journal.ts';
import { failNextCopyWrite } from '../helpers/faults.ts';
import { tempDir } from '../helpers/server.ts';
import { batchRecords, CHUNK, junkFile, open, TestSpace } from './journal-rig.ts';

afterEach(() => {
  vi.restoreAllMocks();
});

/** One chunk of data that names its seed in every byte pattern. */
const chunk = (seed: number): Buffer => {
  const b = Buffer.alloc(CHUNK);
  for (let i = 0; i < CHUNK; i += 4) b.writeUInt32LE((seed * 2654435761 + i) >>> 0, i);
  return b;
};

describe('copies written with their batch', () => {
  it('are in their slots with their records after a reopen, through both ways of writing them', async () => {
    const space = new TestSpace(junkFile());
    const journal = await Journal.create(space);
    const first = journal.slots[0] as number;
    const jobs = native?.writeAndSync === undefined ? undefined : vi.spyOn(native, 'writeAndSync');
    const slots = Array.from({ length: 12 }, () => space.allocate() as number);
    const copies: SlotData[] = slots.map((slot, i) => ({ slot, data: chunk(i) }));
    const records = copies.map((_, i) => batchRecords(i, 1 + (i % 3)));
    // Waves of concurrent appends: each wave groups into batches, some crossing into a new block.
    for (let w = 0; w < copies.length; w += 4) {
      const wave = copies.slice(w, w + 4);
      await Promise.all(wave.map((c, k) => journal.append(records[w + k] as ReturnType<typeof batchRecords>, [c])));
    }
    if (jobs !== undefined) expect(jobs).toHaveBeenCalled(); // the one-job way was taken
    space.close();
    const reopened = new TestSpace(space.path);
    const { records: replayed } = await Journal.open(reopened, first, { readOnly: true });
    expect(replayed).toEqual(records.flat());
    for (const c of copies) expect((await reopened.readSlot(c.slot, CHUNK)).equals(c.data)).toBe(true);
    reopened.close();
  });

  it('a copy whose write fails leaves out its records only; the journal goes on', async () => {
    const space = new TestSpace(junkFile());
    const journal = await Journal.create(space);
    const first = journal.slots[0] as number;
    await journal.append(batchRecords(0, 1)); // the next batch fits in the first block
    const bad = space.allocate() as number;
    const good = space.allocate() as number;
    failNextCopyWrite(space);
    const results = await Promise.allSettled([
      journal.append(batchRecords(1, 1), [{ slot: bad, data: chunk(1) }]),
      journal.append(batchRecords(2, 2), [{ slot: good, data: chunk(2) }]),
    ]);
    expect(results[0]?.status).toBe('rejected');
    expect(isCopyWriteFailure((results[0] as PromiseRejectedResult).reason)).toBe(true);
    expect(results[1]?.status).toBe('fulfilled');
    await journal.append(batchRecords(3, 1)); // not stopped
    space.close();
    const { records } = await open(space.path, first);
    expect(records).toEqual([...batchRecords(0, 1), ...batchRecords(2, 2), ...batchRecords(3, 1)]);
    const reread = new TestSpace(space.path);
    expect((await reread.readSlot(good, CHUNK)).equals(chunk(2))).toBe(true);
    reread.close();
  });

  it('a failed sync in the job stops the journal for good (fail-stop)', async () => {
    if (native?.writeAndSync === undefined) return; // the copies-first way is journal.test.ts's
    const space = new TestSpace(junkFile());
    const journal = await Journal.create(space);
    await journal.append(batchRecords(0, 1));
    const slot = space.allocate() as number;
    vi.spyOn(native, 'writeAndSync').mockImplementationOnce((_fd, buffers, _offsets, _n, _syncFds, done) => {
      setImmediate(() =>
        done(
          buffers.map(() => undefined),
          new NbdsnapError('EIO', 'injected sync error'),
        ),
      );
    });
    const err = await journal.append(batchRecords(1, 1), [{ slot, data: chunk(1) }]).catch((e: unknown) => e);
    expect(isCopyWriteFailure(err)).toBe(false);
    expect((err as Error).message).toContain('injected sync error');
    await expect(journal.append(batchRecords(2, 1))).rejects.toMatchObject({ code: 'EIO' });
    space.close();
  });
});

describe('native writeAndSync (commit.c)', () => {
  const dir = tempDir('nbdsnap-commit-');
  afterAll(() => dir.cleanup());
  const run = (fd: number, buffers: Buffer[], offsets: number[], n: number, syncFds: number[]) =>
    new Promise<{ errors: (Error | undefined)[]; sync: Error | undefined }>((resolve) => {
      native?.writeAndSync?.(fd, buffers, offsets, n, syncFds, (errors, sync) => resolve({ errors, sync }));
    });

  it('writes the copies, then the rest, then syncs; neighbours joined, the rest never joined with a copy', async () => {
    if (native?.writeAndSync === undefined) return;
    const path = join(dir.path, 'ok.img');
    writeFileSync(path, Buffer.alloc(5 * CHUNK));
    const fd = openSync(path, 'r+');
    const bufs = [chunk(1), chunk(2), chunk(3), Buffer.from('records')];
    const out = await run(fd, bufs, [CHUNK, 0, 3 * CHUNK, 2 * CHUNK], 3, [fd]);
    closeSync(fd);
    expect(out.errors).toEqual([undefined, undefined, undefined, undefined]);
    expect(out.sync).toBeUndefined();
    const file = readFileSync(path);
    expect(file.subarray(CHUNK, 2 * CHUNK).equals(chunk(1))).toBe(true);
    expect(file.subarray(0, CHUNK).equals(chunk(2))).toBe(true);
    expect(file.subarray(3 * CHUNK, 4 * CHUNK).equals(chunk(3))).toBe(true);
    expect(file.subarray(2 * CHUNK, 2 * CHUNK + 7).toString()).toBe('records');
  });

  it('stops at the first failed write: nothing after it written, nothing synced', async () => {
    if (native?.writeAndSync === undefined) return;
    const path = join(dir.path, 'ro.img');
    writeFileSync(path, Buffer.alloc(2 * CHUNK));
    const fd = openSync(path, 'r'); // every write fails (EBADF)
    const out = await run(fd, [chunk(1), Buffer.from('records')], [0, CHUNK], 1, [fd]);
    closeSync(fd);
    expect((out.errors[0] as { code?: string }).code).toBe('EBADF');
    expect((out.errors[1] as { code?: string }).code).toBe('ECANCELED');
    expect((out.sync as { code?: string }).code).toBe('ECANCELED');
  });
});
