/**
 * A merge under concurrent load: snapshot `m` is taken, most of the origin is rewritten, then
 * `m` is merged while three connections keep requests in flight on the origin (stamped writes of
 * every shape, WRITE_ZEROES, TRIM, FUA) and read it back (test/helpers/merge.ts). The model
 * starts as the snapshot's content and takes each request when it is answered:
 * - the origin reads as the snapshot the moment `merge.start` returns;
 * - every read during the merge returns exactly the model of its range at that time (a write
 *   always wins over the merge, an unmerged chunk never shows the rolled-back data);
 * - at the end the origin is the model byte for byte, before and after a restart;
 * - a newer snapshot `n` (second variant) is exact before, during and after the merge: client
 *   writes to chunks `m` never changed copy them for `n` during the merge.
 * Reproduce a failure with NBDSNAP_SEED=<seed printed in the failure>.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { changeChunks, type MergeProgress, ModelWriters, mergeStatus, startMerge } from '../helpers/merge.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, Rig, TRIM_ZEROES, tempDir } from '../helpers/snapshots.ts';
import { stampedImage } from '../helpers/stamps.ts';

const SIZE = 16 * MiB + 2.5 * KiB;
const VARIANTS = [
  { chunk: '4K', chunkSize: 4 * KiB, newer: false, seed: 0x3e41, fraction: 0.75 },
  { chunk: '64K', chunkSize: 64 * KiB, newer: true, seed: 0x3e64, fraction: 0.8 },
];

describe.each(VARIANTS)('merge under concurrent writers, chunk $chunk, newer snapshot: $newer', (v) => {
  const dir = tempDir('nbdsnap-merge-conc-');
  const seed = Number(process.env.NBDSNAP_SEED ?? v.seed);
  const where = (what: string) => `${what} (chunk ${v.chunk}, NBDSNAP_SEED=${seed})`;
  const rig = new Rig(dir.path, {
    devices: { disk: makeImage(join(dir.path, 'disk.img'), stampedImage(SIZE, 0)) },
    stores: [makeSparse(join(dir.path, 'store.img'), 96 * MiB)],
    chunkSize: v.chunk,
  });

  afterAll(async () => {
    await rig.stop();
    dir.cleanup();
  });

  it('reads as the model during the merge and ends as the model', async () => {
    await rig.start();
    const c = await rig.open('disk');
    const model = stampedImage(SIZE, 0);
    let seq = await changeChunks(c, model, { chunkSize: v.chunkSize, fraction: 0.2, seed, firstSeq: 1 });
    await rig.createSnapshot('disk', 'm');
    const snap = Buffer.from(model);
    seq = await changeChunks(c, model, { chunkSize: v.chunkSize, fraction: v.fraction, seed: seed + 1, firstSeq: seq });
    let newer: Buffer | undefined;
    if (v.newer) {
      await rig.createSnapshot('disk', 'n');
      newer = Buffer.from(model);
      assertSame(await rig.readAll('disk@n'), newer, where('disk@n before the merge'));
    }
    assertSame(await rig.readAll('disk@m'), snap, where('disk@m before the merge'));
    const before = await rig.list();
    const total = before.find((s) => s.name === 'm')?.chunksInStore ?? 0;
    expect(total).toBeGreaterThan(Math.ceil(SIZE / v.chunkSize) / 2);

    // The writers' first reads come at once: the origin must read as the snapshot from the start.
    const started = await startMerge(rig, 'disk', 'm');
    expect(started).toMatchObject({ snapshot: 'disk@m', state: 'merging', total });
    const writers = new ModelWriters({
      clients: [c, await rig.open('disk'), await rig.open('disk')],
      depth: 6,
      model: Buffer.from(snap),
      chunkSize: v.chunkSize,
      seed: seed + 2,
      firstSeq: seq,
      trimZeroes: TRIM_ZEROES,
    });
    writers.start();
    const samples: MergeProgress[] = [];
    try {
      for (;;) {
        await writers.waitDone(10);
        if (writers.errors.length > 0) break;
        const p = (await mergeStatus(rig)).find((x) => x.snapshot === 'disk@m');
        if (p === undefined) break;
        samples.push(p);
        expect(['merging', 'done'], where(`merge state ${p.state}`)).toContain(p.state);
        if (newer !== undefined && samples.length % 20 === 1)
          assertSame(await rig.readAll('disk@n'), newer, where(`disk@n during the merge (${p.merged}/${p.total})`));
      }
      // A little more after the end: the origin is a plain device again.
      await writers.waitDone(100);
    } finally {
      await writers.stop();
    }
    expect(writers.errors, where('request errors')).toEqual([]);
    expect(writers.mismatches.slice(0, 5), where('reads during the merge')).toEqual([]);
    // The writers did run during the merge, with chunks still unmerged.
    expect(samples.some((p) => (p.merged ?? 0) < (p.total ?? 0) && p.merged !== undefined)).toBe(true);
    for (const k of ['write', 'zero', 'trim', 'read']) expect(writers.counts[k] ?? 0, k).toBeGreaterThan(10);

    assertSame(await rig.readAll('disk'), writers.model, where('origin after the merge'));
    const list = await rig.list();
    expect(list.map((s) => `${s.name}:${s.state}`)).toEqual(v.newer ? ['n:valid'] : []);
    if (newer !== undefined) assertSame(await rig.readAll('disk@n'), newer, where('disk@n after the merge'));

    await rig.closeClients();
    expect(await rig.stop('SIGTERM')).toBe(0);
    await rig.start();
    assertSame(await rig.readAll('disk'), writers.model, where('origin after a restart'));
    if (newer !== undefined) assertSame(await rig.readAll('disk@n'), newer, where('disk@n after a restart'));
    expect(await mergeStatus(rig)).toEqual([]);
  });
});
