/**
 * The merge commands end to end (`nbdsnap merge ...` against a real server):
 * - unknown snapshot or device, or no DEVICE@SNAP: a clear error, nothing starts;
 * - `--wait` shows progress and returns once merged; `nbdsnap events` reports merge-started
 *   and merge-finished; a connection to the snapshot opened before the merge gets EIO, and the
 *   export is gone for new ones;
 * - `--on-next-start`: listed as scheduled (text and --json), the origin and the snapshot
 *   unchanged meanwhile, another merge of the device refused; at the next start the origin reads
 *   as the snapshot at once, the merge completes and releases it, a newer snapshot stays exact;
 * - an invalid (overflowed) snapshot is refused, and a scheduled merge of a snapshot that then
 *   overflows does not happen.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { changeChunks, mergeStatus, startMerge, waitMergeDone } from '../helpers/merge.ts';
import { assertSame, diskRig, KiB, MiB, outcome, tempDir, watchEvents } from '../helpers/snapshots.ts';
import { stampedData } from '../helpers/stamps.ts';

const SIZE = 16 * MiB;
const CHUNK = 64 * KiB;
const dir = tempDir('nbdsnap-merge-ctl-');
afterAll(() => dir.cleanup());

/** The device `disk` (seed-0 stamps) and its store, in their own folder; 64 KiB chunks unless given. */
function setup(name: string, storeBytes: number, size = SIZE, more: { chunkSize?: string; transient?: boolean } = {}) {
  return diskRig(join(dir.path, name), size, storeBytes, { chunkSize: '64K', ...more });
}

describe('merge commands', () => {
  const { origin, rig } = setup('main', 96 * MiB);
  let seq = 1;

  afterAll(() => rig.stop());

  it('names what does not exist, and starts nothing', async () => {
    await rig.start();
    await rig.createSnapshot('disk', 'a');
    let r = await rig.cli(['merge', 'disk@nope']);
    expect([r.code, r.stderr.trim()]).toEqual([1, 'nbdsnap: error: no snapshot disk@nope']);
    r = await rig.cli(['merge', 'nodev@a']);
    expect([r.code, r.stderr.trim()]).toEqual([1, 'nbdsnap: error: no device "nodev"']);
    r = await rig.cli(['merge', 'disk']);
    // A usage error (exit status 2): the error, then the command's usage.
    expect([r.code, r.stderr.trim()]).toEqual([
      2,
      'nbdsnap: error: "disk" is not DEVICE@SNAPSHOT\nnbdsnap: usage: nbdsnap merge <snapshot> [args..]; see nbdsnap merge --help',
    ]);
    expect(await outcome(startMerge(rig, 'disk', 'nope'))).toBe('NOT_FOUND');
    expect(await mergeStatus(rig)).toEqual([]);
    expect((await rig.list()).map((s) => `${s.name}:${s.state}`)).toEqual(['a:valid']);
    await rig.deleteSnapshot('disk', 'a');
  });

  it('--wait merges with progress; events; the old export answers EIO', async () => {
    const events = await watchEvents(rig, 'disk');
    try {
      const c = await rig.open('disk');
      await rig.createSnapshot('disk', 'w');
      const snap = Buffer.from(origin);
      seq = await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.6, seed: 11, firstSeq: seq });
      const old = await rig.open('disk@w');
      assertSame(await old.read(0, MiB), snap.subarray(0, MiB), 'disk@w before the merge');
      const r = await rig.cli(['merge', 'disk@w', '--wait']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toContain('merge of disk@w finished');
      expect(await outcome(old.read(0, 4096))).toBe('EIO');
      expect(await outcome(NbdClient.open(rig.uri('disk@w')))).not.toBe('ok');
      assertSame(await rig.readAll('disk'), snap, 'origin after merge --wait');
      snap.copy(origin);
      await events.waitFor('merge-finished');
      const merges = events.events().filter((e) => String(e.type).startsWith('merge-'));
      expect(merges.map((e) => `${e.type} ${e.snapshot}`)).toEqual(['merge-started disk@w', 'merge-finished disk@w']);
      expect(await rig.list()).toEqual([]);
    } finally {
      await events.stop();
      await rig.closeClients();
    }
  });

  it('--on-next-start: scheduled, shown, nothing changes until the next start', async () => {
    const c = await rig.open('disk');
    await rig.createSnapshot('disk', 'later');
    const snap = Buffer.from(origin);
    seq = await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.5, seed: 12, firstSeq: seq });
    await rig.createSnapshot('disk', 'newer');
    const newer = Buffer.from(origin);
    seq = await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.3, seed: 13, firstSeq: seq });

    const r = await rig.cli(['merge', 'disk@later', '--on-next-start']);
    expect([r.code, r.stdout.trim()]).toEqual([0, 'merge disk@later: scheduled for next start']);
    expect((await rig.cli(['merge', 'status'])).stdout.trim()).toBe('disk@later: scheduled for next start');
    expect(JSON.parse((await rig.cli(['merge', 'status', '--json'])).stdout)).toEqual([
      { snapshot: 'disk@later', state: 'scheduled for next start' },
    ]);
    // Another merge of the device is refused; the origin and both snapshots are as they were.
    const busy = await rig.cli(['merge', 'disk@newer']);
    expect([busy.code, busy.stderr.trim()]).toEqual([
      1,
      'nbdsnap: error: device disk already has a merge of disk@later',
    ]);
    // Writes go on (and copy for both snapshots).
    seq = await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.2, seed: 14, firstSeq: seq });
    assertSame(await rig.readAll('disk'), origin, 'origin while the merge is scheduled');
    assertSame(await rig.readAll('disk@later'), snap, 'disk@later while scheduled');
    assertSame(await rig.readAll('disk@newer'), newer, 'disk@newer while scheduled');
    expect((await rig.list()).map((s) => `${s.name}:${s.state}`)).toEqual(['later:valid', 'newer:valid']);

    await rig.restart();
    // At once: the origin is the snapshot, whether or not the merge is through yet.
    assertSame(await rig.readAll('disk'), snap, 'origin right after the start');
    await waitMergeDone(rig, 'disk@later');
    expect((await rig.cli(['merge', 'status'])).stdout.trim()).toBe('no merges');
    assertSame(await rig.readAll('disk'), snap, 'origin after the scheduled merge');
    assertSame(await rig.readAll('disk@newer'), newer, 'disk@newer after the scheduled merge');
    expect((await rig.list()).map((s) => s.name)).toEqual(['newer']);
    expect(await outcome(NbdClient.open(rig.uri('disk@later')))).not.toBe('ok');
    // Once done, it is not done again at the following start.
    await rig.restart();
    expect(await mergeStatus(rig)).toEqual([]);
    assertSame(await rig.readAll('disk'), snap, 'origin after one more start');
  });
});

describe('invalid snapshots', () => {
  const size = 4 * MiB;
  // 16 chunks of 64 KiB for copies: a few MiB of writes overflow it.
  const { origin, rig } = setup('invalid', 128 * KiB + 16 * CHUNK, size);

  afterAll(() => rig.stop());

  /** Rewrite `n` whole chunks from `first`. */
  async function overwrite(first: number, n: number, seq: number) {
    const c = await rig.open('disk');
    const data = stampedData(seq, first * CHUNK, n * CHUNK);
    await c.write(first * CHUNK, data);
    await c.flush();
    data.copy(origin, first * CHUNK);
  }

  it('refuses to merge an overflowed snapshot', async () => {
    await rig.start();
    await rig.createSnapshot('disk', 'o');
    await overwrite(0, 40, 1);
    expect((await rig.list()).map((s) => `${s.name}:${s.state}:${s.reason}`)).toEqual([
      'o:invalid:difference store full',
    ]);
    const r = await rig.cli(['merge', 'disk@o']);
    expect(r.code).toBe(1); // the server refuses: a runtime error
    expect(r.stderr.trim()).toBe(
      'nbdsnap: error: snapshot disk@o is invalid (difference store full); it cannot be merged',
    );
    expect(await outcome(startMerge(rig, 'disk', 'o', true))).toBe('BAD_ARGUMENT');
    expect(await mergeStatus(rig)).toEqual([]);
    assertSame(await rig.readAll('disk'), origin, 'origin after the refused merges');
    await rig.deleteSnapshot('disk', 'o');
  });

  it('drops a scheduled merge whose snapshot then overflows', async () => {
    await rig.createSnapshot('disk', 'p');
    await startMerge(rig, 'disk', 'p', true);
    expect((await mergeStatus(rig)).map((m) => m.state)).toEqual(['scheduled for next start']);
    await overwrite(10, 40, 2);
    expect((await rig.list()).map((s) => `${s.name}:${s.state}`)).toEqual(['p:invalid']);
    expect(await mergeStatus(rig)).toEqual([]);
    await rig.restart();
    expect(await mergeStatus(rig)).toEqual([]);
    expect((await rig.list()).map((s) => `${s.name}:${s.state}`)).toEqual(['p:invalid']);
    assertSame(await rig.readAll('disk'), origin, 'origin after the start: no merge happened');
    // Another snapshot of the device can be merged.
    await rig.deleteSnapshot('disk', 'p');
    await rig.createSnapshot('disk', 'q');
    const q = Buffer.from(origin);
    const free = (await rig.ctl<{ freeBytes: number }>('store.status')).freeBytes / CHUNK;
    expect(free).toBeGreaterThan(2);
    await overwrite(0, 2, 3);
    await startMerge(rig, 'disk', 'q');
    await waitMergeDone(rig, 'disk@q');
    assertSame(await rig.readAll('disk'), q, 'origin after merging q');
  });
});

describe('a transient store', () => {
  const { origin, rig } = setup('transient', 96 * MiB, SIZE, { chunkSize: '4K', transient: true });

  afterAll(() => rig.stop());

  it('refuses --on-next-start, and a graceful stop lets a running merge finish', async () => {
    await rig.start();
    const c = await rig.open('disk');
    await rig.createSnapshot('disk', 't');
    const snap = Buffer.from(origin);
    await changeChunks(c, origin, { chunkSize: 4 * KiB, fraction: 0.7, seed: 21, firstSeq: 1 });
    const r = await rig.cli(['merge', 'disk@t', '--on-next-start']);
    expect([r.code, r.stderr.trim()]).toEqual([
      1,
      'nbdsnap: error: a transient store keeps no snapshot until the next start',
    ]);
    await startMerge(rig, 'disk', 't');
    // Stopped at once: the snapshot is forgotten at exit, so the merge must not stop halfway.
    expect(await rig.stop('SIGTERM')).toBe(0);
    await rig.start();
    expect(await rig.list()).toEqual([]);
    assertSame(await rig.readAll('disk'), snap, 'origin after a stop during a transient merge');
  });
});
