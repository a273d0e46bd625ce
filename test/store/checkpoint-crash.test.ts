/**
 * Crashes during journal checkpoints, with real `nbdsnap serve` processes: SIGKILL at each step
 * of a checkpoint (the new journal durable but not named; the label naming it; the old journal's
 * slots released; those slots reused for data or journal blocks), through the test-only kill
 * points of src/store/kill-point.ts (`NBDSNAP_TEST_KILL_AT`), and at random times while
 * checkpoints are taken every few batches (`NBDSNAP_CHECKPOINT_BYTES=1`). After every restart:
 * every snapshot reads exactly as its model (its bytes when it was taken), the origin holds every
 * acknowledged write (the one write in flight at the kill either way), and every snapshot's
 * change-tracking answer (`cbt.changed` from it, and between consecutive snapshots) is exactly the
 * blocks written since (the write in flight may count or not). At the end `nbdsnap store check`
 * finds the stopped store clean.
 *
 * Device 1 MiB + 1 KiB (a short last chunk), chunk and tracking block 4 KiB, writes of 512 B to
 * 8 KiB in the first 512 KiB; a 3 MiB store, so slots of the replaced journals are soon reused.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, expect, it } from 'vitest';
import type { NbdClient } from '../../src/client/nbd-client.ts';
import { KILL_ENV } from '../../src/store/kill-point.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, nbdsnap, Rig, tempDir } from '../helpers/snapshots.ts';
import { stampedImage } from '../helpers/stamps.ts';

const SIZE = MiB + KiB;
const BLOCK = 4 * KiB;
const SPAN = 512 * KiB;
const SEED = Number(process.env.NBDSNAP_SEED ?? 0x5eed);

const dir = tempDir('nbdsnap-ckpt-crash-');
const image = makeImage(join(dir.path, 'disk.img'), stampedImage(SIZE, 0));
const store = makeSparse(join(dir.path, 'store.img'), 3 * MiB);
const rig = new Rig(dir.path, {
  devices: { disk: image },
  stores: [store],
  chunkSize: '4K',
  extra: ['--cbt-block-size', '4K', '--low-space', '1'],
});
process.env.NBDSNAP_CHECKPOINT_BYTES = '1';

afterAll(async () => {
  delete process.env[KILL_ENV];
  delete process.env.NBDSNAP_CHECKPOINT_BYTES;
  await rig.stop('SIGKILL');
  dir.cleanup();
});

let seed = SEED;
const random = (n: number) => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return Math.floor((seed / 2 ** 32) * n);
};

/** What the test knows across crashes. */
const origin: Buffer = stampedImage(SIZE, 0);
/** Every acknowledged write's blocks, in order (change tracking's model). */
const writes: number[][] = [];
/** Live snapshots, oldest first: their bytes, and how many writes came before each. */
const snaps: { name: string; model: Buffer; at: number }[] = [];
/** The write in flight when the server died (its blocks may or may not count). */
let inFlight: { offset: number; data: Buffer } | undefined;
/**
 * The snapshot command in flight when the server died: its record may be durable without the
 * answer having come back, so after the restart it may or may not have happened.
 */
let commandInFlight: { create: { name: string; model: Buffer; at: number } } | { delete: string } | undefined;
let names = 0;
let checkpoints = 0;

const blocksOf = (offset: number, length: number) => {
  const out: number[] = [];
  for (let b = Math.floor(offset / BLOCK); b * BLOCK < offset + length; b++) out.push(b);
  return out;
};

type Changed = { ranges: { offset: number; length: number }[] };
const changedBlocks = async (from: string, to?: string) => {
  const c = await rig.ctl<Changed>('cbt.changed', { device: 'disk', from, ...(to === undefined ? {} : { to }) });
  return [...new Set(c.ranges.flatMap((r) => blocksOf(r.offset, r.length)))].sort((a, b) => a - b);
};
/** The blocks of the writes [from, to) of the model. */
const written = (from: number, to = writes.length) => [...new Set(writes.slice(from, to).flat())].sort((a, b) => a - b);

function countCheckpoints(): void {
  checkpoints += (rig.server?.stderr() ?? '').split('journal checkpoint"').length - 1;
}

/** Restart (without kill point) and check every snapshot, the origin and every era. */
async function restartAndCheck(what: string): Promise<void> {
  delete process.env[KILL_ENV];
  await rig.start();
  const list = await rig.list();
  if (commandInFlight !== undefined) {
    const listed = (name: string) => list.some((s) => s.name === name);
    if ('create' in commandInFlight && listed(commandInFlight.create.name)) snaps.push(commandInFlight.create);
    if ('delete' in commandInFlight && !listed(commandInFlight.delete)) snaps.shift();
    commandInFlight = undefined;
  }
  expect(
    list.map((s) => `${s.name}:${s.state}`),
    what,
  ).toEqual(snaps.map((s) => `${s.name}:valid`));
  for (const s of snaps) assertSame(await rig.readAll(`disk@${s.name}`), s.model, `disk@${s.name} ${what}`);
  const now = await rig.readAll('disk');
  if (inFlight !== undefined) {
    // Written or not (a pwrite of at most 8 KiB: whole or not at all here), and tracked or not.
    const { offset, data } = inFlight;
    const end = offset + data.length;
    if (now.subarray(offset, end).equals(data)) data.copy(origin, offset);
    const newest = snaps.at(-1);
    const blocks = blocksOf(offset, data.length);
    if (newest !== undefined) {
      const got = new Set(await changedBlocks(newest.name));
      const before = new Set(written(newest.at));
      if (blocks.some((b) => got.has(b) && !before.has(b))) writes.push(blocks); // it was tracked
    }
    inFlight = undefined;
  }
  assertSame(now, origin, `origin ${what}`);
  for (const [i, s] of snaps.entries()) {
    expect(await changedBlocks(s.name), `${what}: changed since ${s.name}`).toEqual(written(s.at));
    const next = snaps[i + 1];
    if (next !== undefined)
      expect(await changedBlocks(s.name, next.name), `${what}: ${s.name}..${next.name}`).toEqual(
        written(s.at, next.at),
      );
  }
}

/** One write, acknowledged: into the model. */
async function write(c: NbdClient): Promise<void> {
  const length = 512 * (1 + random(16));
  const offset = 512 * random((SPAN - length) / 512);
  const data = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4) data.writeUInt32LE(random(2 ** 32), i);
  inFlight = { offset, data };
  await c.write(offset, data);
  data.copy(origin, offset);
  writes.push(blocksOf(offset, length));
  inFlight = undefined;
}

async function snapshot(): Promise<void> {
  const name = `s${names++}`;
  const created = { name, model: Buffer.from(origin), at: writes.length };
  commandInFlight = { create: created };
  await rig.createSnapshot('disk', name);
  snaps.push(created);
  commandInFlight = undefined;
}

async function deleteOldest(): Promise<void> {
  const s = snaps[0];
  if (s === undefined) return;
  commandInFlight = { delete: s.name };
  await rig.deleteSnapshot('disk', s.name);
  snaps.shift();
  commandInFlight = undefined;
}

/**
 * Writes, snapshots and deletes (at most three snapshots live) until `stop()` says so or the
 * server dies. Returns whether it died.
 */
async function workload(stop: () => boolean, maxWrites: number): Promise<boolean> {
  let c: NbdClient | undefined;
  try {
    c = await rig.open('disk');
    for (let i = 0; i < maxWrites && !stop(); i++) {
      if (i % 60 === 0) {
        if (snaps.length >= 3) await deleteOldest();
        await snapshot();
      }
      await write(c);
    }
    return false;
  } catch {
    return true; // the connection (or the control socket) went with the server
  }
}

it.each(['checkpoint:blocks-written', 'checkpoint:label-written', 'checkpoint:old-released', 'checkpoint:old-reused'])(
  'SIGKILL at %s: every snapshot and every era exact after restart',
  async (point) => {
    if (rig.server === undefined) await restartAndCheck(`before ${point}`);
    await rig.stop('SIGTERM');
    // Not the checkpoint at start (no writes yet in this run): one taken while writes go on.
    process.env[KILL_ENV] = point === 'checkpoint:old-reused' ? point : `${point}@3`;
    let died: boolean;
    try {
      await rig.start();
      const server = rig.server;
      died = await workload(() => false, 4000);
      expect(died, `the server reached ${point}`).toBe(true);
      expect(await server?.stop('SIGKILL')).toBe('SIGKILL'); // it killed itself: already gone
    } catch (err) {
      // Killed during the checkpoint at start (the journal had grown past the threshold).
      if (!/exited \(SIGKILL\) before ready/.test(String(err))) throw err;
    }
    await rig.stop('SIGKILL');
    await restartAndCheck(`after a kill at ${point}`);
    countCheckpoints();
  },
);

it.each([1, 2, 3, 4])('SIGKILL at a random time while checkpoints are taken (run %i)', async (run) => {
  if (rig.server === undefined) await restartAndCheck(`before random kill ${run}`);
  const c = await rig.open('disk');
  for (let i = 0; i < 20; i++) await write(c); // a few checkpoints' worth first
  let stop = false;
  const done = workload(() => stop, 100_000);
  await sleep(50 + random(400));
  countCheckpoints();
  stop = true;
  await rig.stop('SIGKILL');
  await done;
  await restartAndCheck(`after random kill ${run}`);
});

it('checkpoints were taken, and the stopped store checks clean', async () => {
  countCheckpoints();
  await rig.stop('SIGTERM');
  expect(checkpoints).toBeGreaterThan(4);
  const check = await nbdsnap(['store', 'check', store]);
  expect(check.stdout, check.stderr).toMatch(/starts with a checkpoint/);
  expect(check.code, check.stdout).toBe(0);
});
