/**
 * Other snapshots of the device while one is merged: the merge writes through the COW layer,
 * so a snapshot older than the merged one and one newer than it stay exact before, during and
 * after the merge, while clients write to the origin too. Then the newer one (whose copies were
 * partly made during the first merge) is merged, and then the oldest: the origin goes back
 * through each state exactly. A writable snapshot merges with its own writes in it.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { changeChunks, ModelWriters, mergeStatus, startMerge, waitMergeDone } from '../helpers/merge.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, Rig, TRIM_ZEROES, tempDir } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

const SIZE = 16 * MiB + 0.5 * KiB;
const CHUNK = 4 * KiB;
const SEED = Number(process.env.NBDSNAP_SEED ?? 0x07e5);
const where = (what: string) => `${what} (NBDSNAP_SEED=${SEED})`;

describe('other snapshots during a merge', () => {
  const dir = tempDir('nbdsnap-merge-others-');
  const rig = new Rig(dir.path, {
    devices: { disk: makeImage(join(dir.path, 'disk.img'), stampedImage(SIZE, 0)) },
    stores: [makeSparse(join(dir.path, 'store.img'), 96 * MiB)],
    chunkSize: '4K',
  });
  const models = new Map<string, Buffer>();
  let seq = 1;
  let origin = stampedImage(SIZE, 0);

  afterAll(async () => {
    await rig.stop();
    dir.cleanup();
  });

  const checkAll = async (what: string) => {
    for (const [n, m] of models) assertSame(await rig.readAll(`disk@${n}`), m, where(`disk@${n} ${what}`));
  };

  /** Merge `name` with writers on the origin, checking every other snapshot while it runs. */
  async function mergeUnderLoad(name: string): Promise<void> {
    const snap = models.get(name) as Buffer;
    models.delete(name);
    await checkAll(`before merging ${name}`);
    await startMerge(rig, 'disk', name);
    const writers = new ModelWriters({
      clients: [await rig.open('disk'), await rig.open('disk')],
      depth: 4,
      model: Buffer.from(snap),
      chunkSize: CHUNK,
      seed: SEED + seq,
      firstSeq: seq,
      trimZeroes: TRIM_ZEROES,
    });
    writers.start();
    let during = 0;
    try {
      for (;;) {
        await writers.waitDone(30);
        if (writers.errors.length > 0 || (await mergeStatus(rig)).length === 0) break;
        // The other snapshots, read whole while the merge and the writers run (twice: reads of
        // snapshots mostly held in the store are slow).
        if (during < 2) {
          await checkAll(`while merging ${name}`);
          during++;
        }
      }
    } finally {
      await writers.stop();
    }
    expect(writers.errors).toEqual([]);
    expect(writers.mismatches.slice(0, 3), where(`origin reads while merging ${name}`)).toEqual([]);
    expect(during).toBeGreaterThan(0);
    seq = writers.nextSeq;
    origin = writers.model;
    assertSame(await rig.readAll('disk'), origin, where(`origin after merging ${name}`));
    await checkAll(`after merging ${name}`);
    expect((await rig.list()).map((s) => s.name)).toEqual([...models.keys()]);
    await rig.closeClients();
  }

  it('sets up old < m < new, each with much changed after it', async () => {
    await rig.start();
    const c = await rig.open('disk');
    for (const [i, name] of ['old', 'm', 'new'].entries()) {
      await rig.createSnapshot('disk', name);
      models.set(name, Buffer.from(origin));
      seq = await changeChunks(c, origin, {
        chunkSize: CHUNK,
        fraction: [0.4, 0.6, 0.3][i] as number,
        seed: SEED + i,
        firstSeq: seq,
      });
    }
    assertSame(await rig.readAll('disk'), origin, where('origin before any merge'));
    await checkAll('before any merge');
    await rig.closeClients();
  });

  it('merges m (an older and a newer snapshot stay exact)', () => mergeUnderLoad('m'));
  it('merges new, whose copies were partly made during the first merge', () => mergeUnderLoad('new'));

  it('after a restart, merges old: the origin is the first image again', async () => {
    await rig.restart();
    assertSame(await rig.readAll('disk'), origin, where('origin after a restart'));
    await checkAll('after a restart');
    await mergeUnderLoad('old');
    const store = await rig.ctl<{ usedBytes: number; perSnapshot: unknown[] }>('store.status');
    expect(store.perSnapshot).toEqual([]);
  });
});

describe('a writable snapshot', () => {
  const dir = tempDir('nbdsnap-merge-writable-');
  const rig = new Rig(dir.path, {
    devices: { disk: makeImage(join(dir.path, 'disk.img'), stampedImage(SIZE, 0)) },
    stores: [makeSparse(join(dir.path, 'store.img'), 64 * MiB)],
    chunkSize: '4K',
  });

  afterAll(async () => {
    await rig.stop();
    dir.cleanup();
  });

  it('merges with its own writes, and an older snapshot stays exact', async () => {
    await rig.start();
    const origin = stampedImage(SIZE, 0);
    const c = await rig.open('disk');
    await rig.createSnapshot('disk', 'older');
    const older = Buffer.from(origin);
    let seq = await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.3, seed: SEED, firstSeq: 1 });
    await rig.createSnapshot('disk', 'w', true);
    const w = Buffer.from(origin);
    // Its own writes: some over chunks the origin changes later, some over chunks it never does.
    const sc = await rig.open('disk@w');
    for (let i = 0; i < 40; i++) {
      const offset = (i * 397 * CHUNK + i * 1111) % (SIZE - 3 * CHUNK);
      const data = stampedData(seq++, offset, CHUNK + i * 50);
      await sc.write(offset, data);
      data.copy(w, offset);
    }
    await sc.flush();
    seq = await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.5, seed: SEED + 1, firstSeq: seq });
    assertSame(await rig.readAll('disk@w'), w, 'disk@w with its writes');
    await startMerge(rig, 'disk', 'w');
    await waitMergeDone(rig, 'disk@w');
    assertSame(await rig.readAll('disk'), w, 'origin after merging the writable snapshot');
    assertSame(await rig.readAll('disk@older'), older, 'disk@older after the merge');
    expect((await rig.list()).map((s) => s.name)).toEqual(['older']);
  });
});
