/**
 * A difference store that runs out (blksnap's `2100-overflow`, dm-snapshot's invalidation):
 * - every origin write succeeds and lands; the snapshot becomes invalid (listed so, with the
 *   reason, also after a restart), reads of its export answer EIO, its space is freed for the
 *   next snapshot; `nbdsnap events` reported low-space, then overflow, then invalidated;
 * - the same writes with a `store append` made when low-space is reported: no overflow, the
 *   snapshot stays valid and exact, also after a restart.
 * Chunk 4 KiB; the store holds a few dozen chunks; the low-space threshold is 50 %.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { NbdClient } from '../../src/client/nbd-client.ts';
import {
  assertSame,
  diskRig,
  type EventWatcher,
  KiB,
  MiB,
  makeSparse,
  outcome,
  type Rig,
  tempDir,
  watchEvents,
} from '../helpers/snapshots.ts';
import { stampedData } from '../helpers/stamps.ts';

const CHUNK = 4 * KiB;
const SIZE = 2 * MiB + 1536;
const dir = tempDir('nbdsnap-overflow-');
afterAll(() => dir.cleanup());

/** The device and its small store (128 KiB + 48 chunks), in their own folder. */
function setup(name: string) {
  return diskRig(join(dir.path, name), SIZE, 128 * KiB + 48 * CHUNK, { chunkSize: '4K', lowSpace: 50 });
}

/** Data slots free now, from `store status`. */
async function freeChunks(rig: Rig): Promise<number> {
  return (await rig.ctl<{ freeBytes: number }>('store.status')).freeBytes / CHUNK;
}

/** One write into each of chunks [from, to), in order, each awaited; some unaligned, the last one short. */
async function writeChunks(c: NbdClient, origin: Buffer, from: number, to: number): Promise<void> {
  for (let i = from; i < to; i++) {
    const offset = Math.min(i * CHUNK + (i % 3) * 700, SIZE - 1000);
    const data = stampedData(i + 1, offset, 1000);
    await c.write(offset, data);
    data.copy(origin, offset);
  }
}

describe('overflow', () => {
  const { origin, rig } = setup('full');
  let events: EventWatcher | undefined;
  afterAll(async () => {
    await events?.stop();
    await rig.stop();
  });

  it('invalidates the snapshot; every origin write lands', async () => {
    await rig.start();
    events = await watchEvents(rig, 'disk');
    await rig.createSnapshot('disk', 'o1');
    const slots = await freeChunks(rig);
    expect(slots).toBeGreaterThan(20);
    const c = await rig.open('disk');
    const reader = await rig.open('disk@o1');
    // Last chunk (the short one) too: SIZE - 1000 is in it.
    await writeChunks(c, origin, 0, slots + 10);
    await writeChunks(c, origin, Math.floor(SIZE / CHUNK), Math.floor(SIZE / CHUNK) + 1);
    assertSame(await rig.readAll('disk'), origin, 'origin after the overflow');

    const [snap] = await rig.list();
    expect(snap).toMatchObject({ export: 'disk@o1', state: 'invalid', reason: 'difference store full' });
    expect(await outcome(reader.read(0, 4096))).toBe('EIO');
    expect(await outcome(rig.readAll('disk@o1'))).toBe('EIO');

    const kinds = events.events().map((e) => e.type);
    const low = kinds.indexOf('low-space');
    const over = kinds.indexOf('overflow');
    const inval = kinds.indexOf('invalidated');
    expect(low, kinds.join(' ')).toBeGreaterThanOrEqual(0);
    expect(over).toBeGreaterThan(low);
    expect(inval).toBeGreaterThan(over);
    expect(kinds.filter((k) => k === 'overflow')).toHaveLength(1);
    expect(events.events()[over]).toMatchObject({ device: 'disk', snapshots: ['disk@o1'] });
    expect(events.events()[inval]).toMatchObject({ snapshot: 'disk@o1', reason: 'difference store full' });
    expect(events.events()[low]).toMatchObject({ thresholdPercent: 50 });
    // The invalid snapshot's copies were freed.
    expect((await rig.ctl<{ usedBytes: number }>('store.status')).usedBytes).toBe(0);
  });

  it('stays invalid after a restart, and the freed space serves a new snapshot', async () => {
    await events?.stop();
    events = undefined;
    await rig.restart('SIGTERM');
    const [snap] = await rig.list();
    expect(snap).toMatchObject({ export: 'disk@o1', state: 'invalid', reason: 'difference store full' });
    expect(await outcome(rig.readAll('disk@o1'))).toBe('EIO');
    assertSame(await rig.readAll('disk'), origin, 'origin after the restart');

    await rig.createSnapshot('disk', 'o2');
    const model = Buffer.from(origin);
    await writeChunks(await rig.open('disk'), origin, 100, 110);
    assertSame(await rig.readAll('disk@o2'), model, 'disk@o2');
    expect((await rig.list()).map((s) => `${s.name}:${s.state}`)).toEqual(['o1:invalid', 'o2:valid']);
  });
});

describe('a store append on low space', () => {
  const { dir: sub, origin, rig } = setup('append');
  let events: EventWatcher | undefined;
  afterAll(async () => {
    await events?.stop();
    await rig.stop();
  });

  it('avoids the overflow: the snapshot stays valid and exact', async () => {
    const extra = makeSparse(join(sub, 'extra.img'), MiB);
    await rig.start();
    events = await watchEvents(rig, 'disk');
    await rig.createSnapshot('disk', 'a1');
    const model = Buffer.from(origin);
    const slots = await freeChunks(rig);
    const c = await rig.open('disk');
    // Past the 50 % threshold, well before the store is full.
    await writeChunks(c, origin, 0, Math.ceil(slots * 0.75));
    await events.waitFor('low-space');
    expect(events.events().some((e) => e.type === 'overflow')).toBe(false);
    const r = await rig.cli(['store', 'append', extra]);
    expect(r.code, r.stderr).toBe(0);
    await events.waitFor('store-appended');
    await writeChunks(c, origin, Math.ceil(slots * 0.75), slots + 40);

    expect((await rig.list()).map((s) => `${s.name}:${s.state}`)).toEqual(['a1:valid']);
    assertSame(await rig.readAll('disk@a1'), model, 'disk@a1 after the append');
    assertSame(await rig.readAll('disk'), origin, 'origin');
    const kinds = events.events().map((e) => e.type);
    expect(kinds).not.toContain('overflow');
    expect(kinds).not.toContain('invalidated');

    await events.stop();
    events = undefined;
    await rig.restart('SIGKILL');
    expect((await rig.list()).map((s) => `${s.name}:${s.state}`)).toEqual(['a1:valid']);
    assertSame(await rig.readAll('disk@a1'), model, 'disk@a1 after a restart');
  });
});
