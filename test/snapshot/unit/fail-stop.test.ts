/**
 * Fail-stop on the durability path, in process: when the record that guards an origin write (a
 * copy's EXCEPTION, the INVALID of snapshots whose copy could not be made, a change-tracking
 * CBT) cannot be made durable, that write fails with EIO and the origin keeps what the snapshot
 * reads. Nothing in memory then claims more than the disk: the snapshot stays valid, as a replay
 * of what was committed says, and it reads exactly as its point in time.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { BlockDevice } from '../../../src/block/device.ts';
import { native } from '../../../src/block/native.ts';
import { NbdsnapError } from '../../../src/errors.ts';
import { replay } from '../../../src/snapshot/transition.ts';
import { failNextCopyWrite } from '../../helpers/faults.ts';
import { assertSame, outcome } from '../../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../../helpers/stamps.ts';
import { CHUNK, Harness } from './harness.ts';

const SIZE = 32 * CHUNK;
let h: Harness | undefined;
afterEach(() => {
  vi.restoreAllMocks();
  h?.close();
  h = undefined;
});

const chunkData = (seed: number, chunk: number) => stampedData(seed, chunk * CHUNK, CHUNK);

/** The whole device, as `read` answers it. */
const readAll = (d: BlockDevice) => d.read(0, d.size);

async function started(cbtBlockSize = 0): Promise<Harness> {
  h = await new Harness({ devices: { a: SIZE }, slots: 40, cbtBlockSize }).start();
  return h;
}

describe('a store whose commit fails', () => {
  it('fails the origin write that needed a copy with EIO; the snapshot stays valid and exact', async () => {
    const s = await started();
    await s.manager.createSnapshot(['a'], 's', false);
    const origin = s.device('a');
    const model = stampedImage(SIZE, 0);
    await origin.write(0, chunkData(1, 0), false); // copied and recorded
    s.failCommits();
    const err = await origin.write(CHUNK, chunkData(2, 1), false).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdsnapError);
    expect((err as NbdsnapError).code).toBe('EIO');
    expect((err as Error).message).toContain('injected journal write error');
    // The origin write did not happen; the snapshot reads as its point in time.
    const base = s.devices.get('a') as BlockDevice;
    assertSame((await base.read(CHUNK, CHUNK)) as Buffer, model.subarray(CHUNK, 2 * CHUNK), 'origin chunk 1');
    assertSame(await readAll(s.device('a@s')), model, 'a@s');
    // Memory and the committed records agree: valid, with the one copy that was recorded.
    expect(s.manager.list().map((x) => x.state)).toEqual(['valid']);
    const replayed = replay(s.committed, CHUNK);
    expect(replayed.snapshots.get(1)?.state).toBe('valid');
    expect(replayed).toEqual(s.manager.catalog);
    // A write that needs no record (its chunk is copied already) still goes through.
    await origin.write(0, chunkData(3, 0), false);
    assertSame(await readAll(s.device('a@s')), model, 'a@s after a write to a copied chunk');
    // Every later write that needs a record fails the same way.
    expect(await outcome(origin.write(5 * CHUNK, chunkData(4, 5), false))).toBe('EIO');
    assertSame(await readAll(s.device('a@s')), model, 'a@s at the end');
  });

  it('fails writes whose snapshots could not be recorded invalid (store full); they stay valid', async () => {
    const s = await started();
    await s.manager.createSnapshot(['a'], 's', false);
    while (s.store.allocate() !== undefined) {
      // fill the store: no copy can be made
    }
    s.failCommits();
    const origin = s.device('a');
    // Two writes needing the same invalidation: both wait for it, both fail.
    const results = await Promise.all([
      outcome(origin.write(0, chunkData(1, 0), false)),
      outcome(origin.write(4 * CHUNK, chunkData(2, 4), false)),
    ]);
    expect(results).toEqual(['EIO', 'EIO']);
    expect(s.manager.list().map((x) => x.state)).toEqual(['valid']);
    expect(replay(s.committed, CHUNK)).toEqual(s.manager.catalog);
    assertSame(await readAll(s.device('a@s')), stampedImage(SIZE, 0), 'a@s');
    const kinds = s.events.map((e) => e.type);
    expect(kinds).not.toContain('invalidated');
    // Once the store records again, the invalidation goes through and the write lands.
    s.failure = undefined;
    await origin.write(0, chunkData(1, 0), false);
    expect(s.manager.list().map((x) => x.state)).toEqual(['invalid']);
    expect(s.events.map((e) => e.type)).toContain('invalidated');
    expect(replay(s.committed, CHUNK)).toEqual(s.manager.catalog);
  });

  it("fails a write whose change-tracking record cannot be made durable, and a snapshot's own write", async () => {
    const s = await started(CHUNK);
    await s.manager.createSnapshot(['a'], 'w', true);
    s.failCommits();
    expect(await outcome(s.device('a').write(3 * CHUNK, chunkData(1, 3), false))).toBe('EIO');
    expect(await outcome(s.device('a@w').write(2 * CHUNK, chunkData(2, 2), false))).toBe('EIO');
    const model = stampedImage(SIZE, 0);
    assertSame(await readAll(s.device('a')), model, 'origin');
    assertSame(await readAll(s.device('a@w')), model, 'a@w');
    expect(s.manager.catalog.snapshots.get(1)?.privateChunks.size).toBe(0);
    expect(replay(s.committed, CHUNK)).toEqual(s.manager.catalog);
  });
});

describe('a store whose journal cannot be made durable', () => {
  // The copy, its record and the sync go out as one job (copy-writes.ts) where the native helper
  // has it; otherwise the copy is written first and the batch synced by space.sync.
  const ways = [
    ['with the copy in the batch job', true],
    ['with the copy written first', false],
  ] as const;
  for (const [name, combined] of ways) {
    it(`turns failed: the write fails, and so does every later one that needs a record (${name})`, async () => {
      const s = await started();
      await s.manager.createSnapshot(['a'], 's', false);
      vi.restoreAllMocks(); // the real commit from here on
      const space = s.store.space;
      const injected = new NbdsnapError('EIO', 'injected sync error');
      if (combined) {
        if (native?.writeAndSync === undefined) return; // no native helper: the other case covers it
        vi.spyOn(native, 'writeAndSync').mockImplementation((_fd, buffers, _offsets, _n, _syncFds, done) => {
          setImmediate(() =>
            done(
              buffers.map(() => undefined),
              injected,
            ),
          );
        });
      } else {
        vi.spyOn(space, 'commitTarget').mockReturnValue(undefined);
        vi.spyOn(space, 'sync').mockRejectedValue(injected);
      }
      const origin = s.device('a');
      const err = await origin.write(CHUNK, chunkData(1, 1), false).catch((e: unknown) => e);
      expect((err as NbdsnapError).code).toBe('EIO');
      expect((err as Error).message).toContain('injected sync error');
      expect(s.store.failure).toContain('injected sync error');
      vi.restoreAllMocks(); // syncs work again, but the store stays failed until a restart
      const commit = vi.spyOn(s.store, 'commit');
      expect(await outcome(origin.write(6 * CHUNK, chunkData(2, 6), false))).toBe('EIO');
      expect(commit).not.toHaveBeenCalled(); // refused before a slot is taken
      expect(s.manager.list().map((x) => x.state)).toEqual(['valid']);
      assertSame(await readAll(s.device('a@s')), stampedImage(SIZE, 0), 'a@s');
    });
  }

  it('a copy whose write fails is not recorded: the snapshot is invalidated, the origin write goes on', async () => {
    const s = await started();
    await s.manager.createSnapshot(['a'], 's', false);
    vi.restoreAllMocks(); // the real commit from here on
    const space = s.store.space;
    failNextCopyWrite(space); // as commit.c reports it: nothing after the copy written or synced
    const origin = s.device('a');
    await origin.write(CHUNK, chunkData(1, 1), false); // succeeds: the origin write goes on
    expect(s.store.failure).toBeUndefined();
    expect(s.manager.list().map((x) => x.state)).toEqual(['invalid']);
    expect(await outcome(s.device('a@s').read(0, CHUNK))).toBe('EIO');
    const base = s.devices.get('a') as BlockDevice;
    assertSame((await base.read(CHUNK, CHUNK)) as Buffer, chunkData(1, 1), 'origin chunk 1');
  });
});
