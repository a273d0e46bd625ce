/**
 * The corruption test, after blksnap's `corrupt` (multithreaded variant): every sector of the
 * origin is stamped (operation sequence number, sector number, CRC); three connections keep six
 * requests each in flight (stamped writes of mixed sizes, unaligned, across chunk boundaries, in
 * the short last chunk, over many chunks, TRIM, WRITE_ZEROES, FUA, FLUSH) while snapshots are
 * taken and deleted; every live snapshot is read back whole, while the writes go on, and compared
 * byte for byte with the model of the image at its time (see test/helpers/workload.ts for how
 * requests in flight during a snapshot are decided). One snapshot is writable and gets its own
 * writes. Device size 16 MiB + 5.5 KiB: the last chunk is short for both chunk sizes.
 *
 * Reproduce a failure with NBDSNAP_SEED=<seed printed in the failure>.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { NbdClient } from '../../src/client/nbd-client.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, Rig, TRIM_ZEROES, tempDir } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';
import { rng, Workload } from '../helpers/workload.ts';

const SIZE = 16 * MiB + 5.5 * KiB;
const VARIANTS = [
  { chunk: '4K', chunkSize: 4 * KiB, seed: 0x4b1 },
  { chunk: '64K', chunkSize: 64 * KiB, seed: 0x64b },
];
const ROUNDS = 5;
const OPS_PER_ROUND = 250;
const MAX_LIVE = 3;

/**
 * Writes to a writable snapshot: 5 batches of 8 non-overlapping stamped writes (aligned,
 * unaligned, across chunk boundaries, the last chunk), applied to `model` once answered.
 */
async function scribble(c: NbdClient, model: Buffer, chunkSize: number, firstSeq: number, seed: number) {
  const random = rng(seed);
  const int = (n: number) => Math.floor(random() * n);
  let seq = firstSeq;
  for (let batch = 0; batch < 5; batch++) {
    const taken: [number, number][] = [];
    const writes: Promise<void>[] = [];
    const applied: [number, Buffer][] = [];
    while (taken.length < 8) {
      const kind = int(4);
      let offset: number;
      let length: number;
      if (kind === 0) {
        length = 512 * (1 + int(16));
        offset = 512 * int((SIZE - length) / 512);
      } else if (kind === 1) {
        length = 1 + int(3 * chunkSize);
        offset = int(SIZE - length);
      } else if (kind === 2) {
        const boundary = chunkSize * (1 + int(Math.floor(SIZE / chunkSize) - 1));
        offset = boundary - 1 - int(2000);
        length = 2 + int(4000);
      } else {
        offset = SIZE - 1 - int(chunkSize + 3000);
        length = SIZE - offset;
      }
      if (taken.some(([s, e]) => offset < e && s < offset + length)) continue;
      taken.push([offset, offset + length]);
      const data = stampedData(seq++, offset, length);
      writes.push(c.write(offset, data));
      applied.push([offset, data]);
    }
    await Promise.all(writes);
    for (const [offset, data] of applied) data.copy(model, offset);
  }
  await c.flush();
}

describe.each(VARIANTS)('corruption test, chunk size $chunk', ({ chunk, chunkSize, seed: defaultSeed }) => {
  const dir = tempDir('nbdsnap-corrupt-');
  const seed = Number(process.env.NBDSNAP_SEED ?? defaultSeed);
  let rig: Rig | undefined;

  afterAll(async () => {
    await rig?.stop();
    dir.cleanup();
  });

  it('keeps every live snapshot exact under random pipelined writes, creates and deletes', async () => {
    const image = makeImage(join(dir.path, 'disk.img'), stampedImage(SIZE, 0));
    const store = makeSparse(join(dir.path, 'store.img'), 192 * MiB);
    rig = new Rig(dir.path, { devices: { disk: image }, stores: [store], chunkSize: chunk });
    await rig.start();
    const clients = await Promise.all([0, 1, 2].map(() => (rig as Rig).open('disk')));
    const wl = new Workload({
      size: SIZE,
      chunkSize,
      clients,
      depth: 6,
      seed,
      model: stampedImage(SIZE, 0),
      firstSeq: 1,
      trimZeroes: TRIM_ZEROES,
      maxOps: 20_000,
    });
    const live = new Map<string, Buffer>();
    const deleted: string[] = [];
    const where = (what: string) => `${what} (chunk ${chunk}, NBDSNAP_SEED=${seed})`;
    wl.start();
    try {
      for (let round = 0; round < ROUNDS; round++) {
        await wl.waitCompleted(OPS_PER_ROUND);
        const name = `s${round}`;
        const writable = round === 2;
        const cut = wl.beginCut();
        expect(await rig.createSnapshot('disk', name, writable)).toEqual([`disk@${name}`]);
        wl.endCut(cut);
        // The snapshot as first read (writes keep going) decides the requests in flight at the cut.
        const first = await rig.readAll(`disk@${name}`);
        const { model } = wl.resolveCut(cut, first);
        assertSame(first, model, where(`disk@${name} just after creation`));
        if (writable) {
          const c = await rig.open(`disk@${name}`);
          await scribble(c, model, chunkSize, 50_000_000, seed + round);
          assertSame(await rig.readAll(`disk@${name}`), model, where(`writable disk@${name} after its own writes`));
        }
        live.set(name, model);
        if (live.size > MAX_LIVE) {
          const oldest = live.keys().next().value as string;
          await rig.deleteSnapshot('disk', oldest);
          live.delete(oldest);
          deleted.push(oldest);
        }
        for (const [n, m] of live) {
          if (n !== name) assertSame(await rig.readAll(`disk@${n}`), m, where(`disk@${n} in round ${round}`));
        }
      }
    } finally {
      await wl.stop();
    }
    assertSame(await rig.readAll('disk'), wl.model, where('origin after the workload'));
    for (const [n, m] of live) assertSame(await rig.readAll(`disk@${n}`), m, where(`disk@${n} at the end`));

    const list = await rig.list();
    expect(list.map((s) => `${s.export} ${s.state}`)).toEqual([...live.keys()].map((n) => `disk@${n} valid`));
    for (const n of deleted) expect(list.some((s) => s.name === n)).toBe(false);

    // The workload did exercise every kind of request it is meant to.
    const stats = wl.stats();
    for (const k of ['write', 'trim', 'zero', 'flush', 'fua', 'unaligned', 'spanning', 'lastChunk']) {
      expect(stats[k], `${k} requests in ${JSON.stringify(stats)}`).toBeGreaterThan(10);
    }
  });
});
