/**
 * After a crash, the journal's last batch may record a copy whose data never reached its slot
 * (the one sync for data and records was cut short) or whose data was damaged since an
 * acknowledged commit. The batch is kept; the copy is settled before anything is served:
 * - the origin chunk still holds what was to be copied (its checksum is the recorded one): the
 *   copy is written again from it, the snapshot reads exactly and `store check` is clean;
 * - the origin chunk has changed: the copy is recorded lost, the snapshot lists it damaged and
 *   its read answers EIO; never the origin's newer bytes.
 * The crash is made by writing the batch through the store API and closing without CLEAN.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checksum } from '../../src/store/checksum.ts';
import { StoreSpace } from '../../src/store/space.ts';
import { DiffStore } from '../../src/store/store.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, nbdsnap, outcome, Rig, tempDir } from '../helpers/snapshots.ts';
import { stampedImage } from '../helpers/stamps.ts';

const CHUNK = 64 * KiB;
const SIZE = 4 * MiB;
const CHUNK_NO = 5;

const dir = tempDir('nbdsnap-last-batch-');
afterAll(() => dir.cleanup());

/** A store with snapshot `s` of `disk`, then a crash right after a batch recording a copy of
 * chunk 5 whose slot holds garbage. Returns the rig (stopped) and the image as snapshotted. */
async function crashedCopy(name: string): Promise<{ rig: Rig; image: Buffer; disk: string; store: string }> {
  const image = stampedImage(SIZE, 0);
  const disk = makeImage(join(dir.path, `${name}-disk.img`), image);
  const store = makeSparse(join(dir.path, `${name}-store.img`), 16 * MiB);
  const rig = new Rig(dir.path, { devices: { disk }, stores: [store], extra: ['--cbt-block-size', '0'] });
  await rig.start();
  await rig.createSnapshot('disk', 's');
  await rig.stop('SIGTERM');
  const ranges = [StoreSpace.resolve(store)];
  const { store: opened, records } = await DiffStore.open(ranges, { transient: false });
  const snap = records.find((r) => r.type === 'SNAPSHOT');
  if (snap?.type !== 'SNAPSHOT') throw new Error('no SNAPSHOT record');
  const member = snap.members[0] as { device: number; seq: number };
  const slot = opened.allocate() as number;
  await opened.writeSlot(slot, Buffer.alloc(CHUNK, 0x5a)); // not the data the record names
  const crc = checksum(image.subarray(CHUNK_NO * CHUNK, (CHUNK_NO + 1) * CHUNK));
  await opened.commit([{ type: 'EXCEPTION', device: member.device, seq: member.seq, chunk: CHUNK_NO, slot, crc }]);
  opened.space.close(); // a crash: no CLEAN batch
  return { rig, image, disk, store };
}

describe('a copy of the last batch that does not hold its data, after a crash', () => {
  it('is written again from the origin when the origin still holds it', async () => {
    const { rig, image, store } = await crashedCopy('repair');
    await rig.start();
    try {
      const [s] = await rig.list();
      expect(s?.state).toBe('valid');
      expect((s as { damaged?: number }).damaged ?? 0).toBe(0);
      assertSame(await rig.readAll('disk@s'), image, 'the snapshot');
      expect(rig.server?.stderr()).toContain('written again from the origin');
    } finally {
      await rig.stop('SIGTERM');
    }
    const check = await nbdsnap(['store', 'check', store]);
    expect(check.stderr).toBe('');
    expect(check.code).toBe(0);
  });

  it('is recorded lost when the origin has changed: EIO, listed damaged, never the new bytes', async () => {
    const { rig, image, disk } = await crashedCopy('lost');
    // The origin write the copy guarded went ahead before the crash.
    const now = readFileSync(disk);
    now.fill(0xee, CHUNK_NO * CHUNK, (CHUNK_NO + 1) * CHUNK);
    writeFileSync(disk, now);
    await rig.start();
    try {
      const [s] = await rig.list();
      expect(s?.state).toBe('valid');
      expect((s as { damaged?: number }).damaged).toBe(1);
      const c = await rig.open('disk@s');
      expect(await outcome(c.read(CHUNK_NO * CHUNK, 4096))).toBe('EIO');
      assertSame(await c.read(0, CHUNK_NO * CHUNK), image.subarray(0, CHUNK_NO * CHUNK), 'chunks before');
      assertSame(
        await c.read((CHUNK_NO + 1) * CHUNK, CHUNK),
        image.subarray((CHUNK_NO + 1) * CHUNK, (CHUNK_NO + 2) * CHUNK),
        'the chunk after',
      );
      // Still lost after another start.
      await rig.restart('SIGTERM');
      const [again] = await rig.list();
      expect((again as { damaged?: number }).damaged).toBe(1);
      expect(await outcome((await rig.open('disk@s')).read(CHUNK_NO * CHUNK, 512))).toBe('EIO');
    } finally {
      await rig.stop('SIGTERM');
    }
  });
});
