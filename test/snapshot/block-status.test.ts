/**
 * Block status of a snapshot export, as nbdinfo shows it:
 * - `nbdinfo --map=qemu:allocation-depth`: 1 (local) where the snapshot's chunk is in the
 *   difference store, 2 (backing) where it still reads the origin;
 * - `nbdinfo --map` (base:allocation): chunks in the store are data; elsewhere the origin's own
 *   allocation, which for those chunks is still what it was at snapshot time (holes stay holes).
 * The origin is a sparse 8 MiB + 1.5 KiB file (64 KiB chunks, short last chunk) with data at
 * [0, 1M) and [4M, 5M); after the snapshot the origin is overwritten at [0, 128K), written in a
 * hole at [2M, +64K), trimmed at [4M, +64K), and written in the short last chunk.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hasTool, ok, run, writeAt } from '../helpers/clients.ts';
import { assertSame, KiB, MiB, makeSparse, Rig, TRIM_ZEROES, tempDir } from '../helpers/snapshots.ts';
import { stampedData } from '../helpers/stamps.ts';

const SIZE = 8 * MiB + 1536;
const CHUNK = 64 * KiB;

interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

/** `nbdinfo --map[=CTX] --json URI`, adjacent entries of one type merged. */
async function map(uri: string, context?: string): Promise<[number, number, number][]> {
  const out = ok(
    await run('nbdinfo', [context === undefined ? '--map' : `--map=${context}`, '--json', uri]),
    'nbdinfo',
  );
  const merged: [number, number, number][] = [];
  for (const e of JSON.parse(out) as MapEntry[]) {
    const last = merged[merged.length - 1];
    if (last !== undefined && last[2] === e.type && last[0] + last[1] === e.offset) last[1] += e.length;
    else merged.push([e.offset, e.length, e.type]);
  }
  return merged;
}

describe.skipIf(!hasTool('nbdinfo') || !TRIM_ZEROES)('block status of a snapshot export', () => {
  const dir = tempDir('nbdsnap-bs-');
  const image = makeSparse(join(dir.path, 'disk.img'), SIZE);
  const rig = new Rig(dir.path, {
    devices: { disk: image },
    stores: [makeSparse(join(dir.path, 'store.img'), 32 * MiB)],
    chunkSize: '64K',
  });
  const before = Buffer.alloc(SIZE);
  afterAll(async () => {
    await rig.stop();
    dir.cleanup();
  });

  it('shows what is in the store and what is read from the origin', async () => {
    for (const [offset, length, seq] of [
      [0, MiB, 1],
      [4 * MiB, MiB, 2],
    ] as const) {
      const data = stampedData(seq, offset, length);
      writeAt(image, offset, data);
      data.copy(before, offset);
    }
    await rig.start();
    await rig.createSnapshot('disk', 's');
    const c = await rig.open('disk');
    await c.write(0, stampedData(3, 0, 128 * KiB));
    await c.write(2 * MiB, stampedData(4, 2 * MiB, CHUNK));
    await c.trim(4 * MiB, CHUNK);
    await c.write(8 * MiB, stampedData(5, 8 * MiB, 1536));
    await c.flush();
    assertSame(await rig.readAll('disk@s'), before, 'disk@s');

    const LOCAL = 1;
    const BACKING = 2;
    expect(await map(rig.uri('disk@s'), 'qemu:allocation-depth')).toEqual([
      [0, 128 * KiB, LOCAL],
      [128 * KiB, 2 * MiB - 128 * KiB, BACKING],
      [2 * MiB, CHUNK, LOCAL],
      [2 * MiB + CHUNK, 2 * MiB - CHUNK, BACKING],
      [4 * MiB, CHUNK, LOCAL],
      [4 * MiB + CHUNK, 4 * MiB - CHUNK, BACKING],
      [8 * MiB, 1536, LOCAL],
    ]);
    const DATA = 0;
    const HOLE = 3;
    expect(await map(rig.uri('disk@s'))).toEqual([
      [0, MiB, DATA], // store, then origin data
      [MiB, MiB, HOLE],
      [2 * MiB, CHUNK, DATA], // a copy of a hole: in the store, so data
      [2 * MiB + CHUNK, 2 * MiB - CHUNK, HOLE],
      [4 * MiB, MiB, DATA], // the trimmed chunk's copy, then origin data
      [5 * MiB, 3 * MiB, HOLE],
      [8 * MiB, 1536, DATA],
    ]);
    // The origin itself: the trim made a hole, the writes made data.
    expect(await map(rig.uri('disk'))).toEqual([
      [0, MiB, DATA],
      [MiB, MiB, HOLE],
      [2 * MiB, CHUNK, DATA],
      [2 * MiB + CHUNK, 2 * MiB, HOLE],
      [4 * MiB + CHUNK, MiB - CHUNK, DATA],
      [5 * MiB, 3 * MiB, HOLE],
      [8 * MiB, 1536, DATA],
    ]);
  });
});
