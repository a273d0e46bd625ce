/**
 * Writable snapshots (`snapshot create --writable`, blksnap's writable images): writes go to the
 * snapshot only, never to the origin; origin writes never show in the snapshot, also when both
 * write the same chunks at the same time; a read-only snapshot taken later is unaffected; the
 * snapshot and its own writes survive SIGTERM and SIGKILL (after FLUSH). TRIM on the snapshot is
 * accepted and keeps the data, WRITE_ZEROES writes zeroes, FAST_ZERO is refused (ENOTSUP); a
 * read-only snapshot refuses writes (EPERM). Chunk 64 KiB, device 8 MiB + 3 KiB.
 */
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import type { NbdClient } from '../../src/client/nbd-client.ts';
import { CommandFlag, TransmissionFlag } from '../../src/nbd-protocol/index.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, outcome, Rig, tempDir } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

const SIZE = 8 * MiB + 3 * KiB;
const CHUNK = 64 * KiB;
const LAST = Math.floor(SIZE / CHUNK) * CHUNK;
const dir = tempDir('nbdsnap-writable-');
const origin = stampedImage(SIZE, 0);
const rig = new Rig(dir.path, {
  devices: { disk: makeImage(join(dir.path, 'disk.img'), origin) },
  stores: [makeSparse(join(dir.path, 'store.img'), 64 * MiB)],
});
let w: Buffer; // model of disk@w
let r: Buffer; // model of disk@r
let seq = 1;

afterAll(async () => {
  await rig.stop();
  dir.cleanup();
});

async function put(c: NbdClient, model: Buffer, offset: number, length: number, flags = 0): Promise<void> {
  const data = stampedData(seq++, offset, length);
  await c.write(offset, data, flags);
  data.copy(model, offset);
}

async function checkAll(what: string): Promise<void> {
  assertSame(await rig.readAll('disk'), origin, `origin ${what}`);
  assertSame(await rig.readAll('disk@w'), w, `disk@w ${what}`);
  if (r !== undefined) assertSame(await rig.readAll('disk@r'), r, `disk@r ${what}`);
}

it('writes to a writable snapshot stay in the snapshot', async () => {
  await rig.start();
  expect(await rig.createSnapshot('disk', 'w', true)).toEqual(['disk@w']);
  w = Buffer.from(origin);
  const snap = await rig.open('disk@w');
  expect(snap.transmissionFlags & TransmissionFlag.READ_ONLY).toBe(0);
  await put(snap, w, 0, 4096);
  await put(snap, w, 3 * CHUNK + 17, 999); // unaligned
  await put(snap, w, 5 * CHUNK - 512, 1024); // across a boundary
  await put(snap, w, 7 * CHUNK - 5000, 3 * CHUNK, CommandFlag.FUA); // over four chunks
  await put(snap, w, LAST - 100, SIZE - LAST + 100); // into the short last chunk, to the end
  await snap.writeZeroes(20 * CHUNK + 10, 5000);
  w.fill(0, 20 * CHUNK + 10, 20 * CHUNK + 5010);
  await snap.trim(22 * CHUNK, CHUNK); // a hint: the snapshot keeps its data
  expect(await outcome(snap.writeZeroes(24 * CHUNK, CHUNK, CommandFlag.FAST_ZERO))).toBe('ENOTSUP');
  await snap.flush();
  await checkAll('after writes to the snapshot');
});

it('origin writes do not show in it, even to the same chunks at the same time', async () => {
  const c = await rig.open('disk');
  const snap = await rig.open('disk@w');
  await put(c, origin, 0, 8192); // a chunk the snapshot has written
  await put(c, origin, 30 * CHUNK, CHUNK); // one it has not
  // Same chunks, both sides, at once: different bytes, and the same bytes.
  const both: Promise<void>[] = [];
  for (let i = 0; i < 12; i++) {
    const chunk = 40 + i;
    both.push(put(c, origin, chunk * CHUNK + 512, 2048));
    both.push(put(snap, w, chunk * CHUNK + 8192 + (i % 2) * 1000, 4096));
  }
  await Promise.all(both);
  const same = 60 * CHUNK;
  const fromOrigin = stampedData(seq++, same, 4096);
  const fromSnap = stampedData(seq++, same, 4096);
  await Promise.all([c.write(same, fromOrigin), snap.write(same, fromSnap)]);
  fromOrigin.copy(origin, same);
  fromSnap.copy(w, same);
  await checkAll('after origin writes');
});

it('a read-only snapshot taken later is unaffected, and refuses writes', async () => {
  await rig.createSnapshot('disk', 'r');
  r = Buffer.from(origin);
  const c = await rig.open('disk');
  const snap = await rig.open('disk@w');
  const ro = await rig.open('disk@r');
  expect(ro.transmissionFlags & TransmissionFlag.READ_ONLY).not.toBe(0);
  expect(await outcome(ro.write(0, Buffer.alloc(512)))).toBe('EPERM');
  for (let i = 0; i < 20; i++) {
    await put(c, origin, i * 6 * CHUNK + 300, 5000);
    await put(snap, w, (i * 5 + 1) * CHUNK + 900, 3000);
  }
  await snap.flush();
  await checkAll('with a read-only snapshot too');
});

it('survives SIGTERM', async () => {
  await rig.restart('SIGTERM');
  const list = await rig.list();
  expect(list.map((s) => `${s.name}:${s.writable}`)).toEqual(['w:true', 'r:false']);
  await checkAll('after SIGTERM');
  const snap = await rig.open('disk@w');
  expect(snap.transmissionFlags & TransmissionFlag.READ_ONLY).toBe(0);
  await put(snap, w, 33 * CHUNK + 5, 70_000);
  await put(snap, w, LAST, SIZE - LAST);
  await snap.flush();
  await put(await rig.open('disk'), origin, 33 * CHUNK, CHUNK, CommandFlag.FUA);
});

it('survives SIGKILL after FLUSH', async () => {
  await rig.restart('SIGKILL');
  await checkAll('after SIGKILL');
});
