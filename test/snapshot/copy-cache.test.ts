/**
 * The copy cache with a real server (`--copy-cache 256K`: three 64 KiB chunks of data, block
 * checksums for the rest), judged by what a client reads:
 * - a byte flipped in a copy on disk after the snapshot read it: while the chunk's data is kept
 *   the reads are exact; once evicted (reads of other chunks), the read of the damaged part gets
 *   EIO with a `damaged` event, and every later read of that chunk gets EIO (LOST); the same for
 *   a chunk damaged inside a large read of whole chunks (read and hashed on the pool in one batch);
 * - slots freed and reused (snapshots deleted, a merge) never read as their old copies: rounds of
 *   create / copy / partial reads / delete or merge on a small store, every snapshot read
 *   compared with a model.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readAt, writeAt } from '../helpers/clients.ts';
import { startMerge, waitMergeDone } from '../helpers/merge.ts';
import { assertSame, diskRig, KiB, MiB, outcome, tempDir, watchEvents } from '../helpers/snapshots.ts';
import { stampedData } from '../helpers/stamps.ts';

const CHUNK = 64 * KiB;
const SIZE = 32 * CHUNK;
const dir = tempDir('nbdsnap-copycache-');
afterAll(() => dir.cleanup());

describe('damage on disk after a copy was read', () => {
  const { origin, store, rig } = diskRig(dir.path, SIZE, 16 * MiB, { extra: ['--copy-cache', '256K'] });
  afterAll(() => rig.stop());

  it('is served exactly while kept, and answers EIO once evicted', async () => {
    await rig.start();
    await rig.createSnapshot('disk', 's');
    const o = await rig.open('disk');
    for (let c = 0; c < 16; c++) await o.write(c * CHUNK + 512, stampedData(1 + c, c * CHUNK + 512, 1024));
    await o.flush();
    const snap = await rig.open('disk@s');
    const part = (c: number, at: number, n: number) => snap.read(c * CHUNK + at, n);
    // Chunk 3 read in part: its data and block checksums are kept.
    assertSame(await part(3, 8 * KiB, 4 * KiB), origin.subarray(3 * CHUNK + 8 * KiB, 3 * CHUNK + 12 * KiB), 'chunk 3');
    const at = readFileSync(store).indexOf(origin.subarray(3 * CHUNK, 4 * CHUNK));
    expect(at).toBeGreaterThan(0);
    const events = await watchEvents(rig, 'disk');
    try {
      const b = readAt(store, at + 9 * KiB, 1);
      writeAt(store, at + 9 * KiB, Buffer.from([(b[0] as number) ^ 0x5a]));
      // Kept data (the verified bytes), or the block read again and checked against its block
      // checksum (kept since the copy was made): EIO. Never the damaged bytes.
      const kept = await part(3, 8 * KiB, 4 * KiB).catch((err: unknown) => err);
      if (Buffer.isBuffer(kept)) assertSame(kept, origin.subarray(3 * CHUNK + 8 * KiB, 3 * CHUNK + 12 * KiB), 'kept');
      else expect(String(kept)).toMatch(/EIO/);
      // Evicted by reads of other chunks in part.
      for (let c = 4; c < 16; c++) {
        assertSame(await part(c, 0, 512), origin.subarray(c * CHUNK, c * CHUNK + 512), `chunk ${c}`);
      }
      expect(await outcome(part(3, 8 * KiB, 4 * KiB))).toBe('EIO');
      expect(await events.waitFor('damaged')).toMatchObject({ chunk: 3, snapshots: ['disk@s'] });
    } finally {
      await events.stop();
    }
    // Lost: every part of it answers EIO now, the other chunks read exact.
    expect(await outcome(part(3, 40 * KiB, 512))).toBe('EIO');
    expect(await outcome(snap.read(2 * CHUNK, 3 * CHUNK))).toBe('EIO');
    assertSame(await snap.read(4 * CHUNK, 12 * CHUNK), origin.subarray(4 * CHUNK, 16 * CHUNK), 'chunks 4-15');
    expect((await rig.list()).map((s) => (s as { damaged?: number }).damaged)).toEqual([1]);
  });

  it('a large read of whole copies (read and hashed in one batch) answers EIO for a damaged one', async () => {
    const snap = await rig.open('disk@s');
    const at = readFileSync(store).indexOf(origin.subarray(10 * CHUNK, 11 * CHUNK));
    expect(at).toBeGreaterThan(0);
    const b = readAt(store, at + 60 * KiB, 1);
    writeAt(store, at + 60 * KiB, Buffer.from([(b[0] as number) ^ 0xa5]));
    // Four whole chunks (256 KiB), chunk 10 among them: never its damaged bytes.
    expect(await outcome(snap.read(8 * CHUNK, 4 * CHUNK))).toBe('EIO');
    expect(await outcome(snap.read(10 * CHUNK, 512))).toBe('EIO');
    assertSame(await snap.read(12 * CHUNK, 4 * CHUNK), origin.subarray(12 * CHUNK, 16 * CHUNK), 'chunks 12-15');
    assertSame(
      await snap.read(11 * CHUNK + 512, 3 * CHUNK),
      origin.subarray(11 * CHUNK + 512, 14 * CHUNK + 512),
      'parts',
    );
    expect((await rig.list()).map((s) => (s as { damaged?: number }).damaged)).toEqual([2]);
  });
});

describe('slots freed and reused', () => {
  // Room for about 60 copies: the rounds below reuse freed slots.
  const { origin, rig } = diskRig(join(dir.path, 'reuse'), SIZE, 5 * MiB, {
    seed: 100,
    extra: ['--copy-cache', '256K'],
  });
  afterAll(() => rig.stop());

  it('never read as their old copies, after deletes and merges', async () => {
    await rig.start();
    const model = Buffer.from(origin);
    const o = await rig.open('disk');
    for (let round = 0; round < 6; round++) {
      const name = `r${round}`;
      await rig.createSnapshot('disk', name);
      const at = Buffer.from(model); // the snapshot's point in time
      for (let k = 0; k < 24; k++) {
        const c = (round * 7 + k * 5) % 32;
        const off = c * CHUNK + ((k * 4096) % CHUNK);
        const data = stampedData(round * 100 + k, off, 3000);
        data.copy(model, off);
        await o.write(off, data);
      }
      await o.flush();
      const snap = await rig.open(`disk@${name}`);
      // Partial reads (kept), then whole reads, all exact.
      for (let c = 0; c < 32; c++) {
        const off = c * CHUNK + ((c * 8192) % CHUNK);
        assertSame(await snap.read(off, 4096), at.subarray(off, off + 4096), `${name} chunk ${c} part`);
      }
      assertSame(await rig.readAll(`disk@${name}`), at, `${name} whole`);
      await snap.close();
      if (round % 2 === 1) {
        // Merge it back: the origin reads as the snapshot, its copies are freed.
        await startMerge(rig, 'disk', name);
        await waitMergeDone(rig, `disk@${name}`);
        at.copy(model);
        assertSame(await o.read(0, SIZE), model, `origin after merging ${name}`);
      } else await rig.deleteSnapshot('disk', name);
    }
  });
});
