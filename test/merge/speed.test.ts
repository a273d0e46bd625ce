/**
 * The merge rate limit end to end (a real server, `nbdsnap merge ... --speed`, `merge speed`):
 * - a merge started with a low speed shows it in `merge status` (text and --json) and is still
 *   merging after its first run; `merge speed DEV@SNAP 0` lifts the limit (read back), and the
 *   origin then reads exactly as the snapshot;
 * - serve's --merge-speed is the default, and a merge resumed after a restart runs at it (a speed
 *   is not recorded in the journal), changeable through the control socket;
 * - bad values are refused: usage errors (exit 2) on the command line, BAD_ARGUMENT on the
 *   socket; `merge speed` of a snapshot with no merge in progress is an error naming it.
 * No timing is asserted: the limits used are so low that the merge cannot end before the test
 * changes them (a first run of 1 MiB at 64 KiB/s is followed by a 16 s pause).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { changeChunks, mergeStatus, waitMergeDone } from '../helpers/merge.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, outcome, Rig, tempDir } from '../helpers/snapshots.ts';
import { stampedImage } from '../helpers/stamps.ts';

const SIZE = 16 * MiB;
const CHUNK = 64 * KiB;
const dir = tempDir('nbdsnap-merge-speed-');
afterAll(() => dir.cleanup());

function setup(name: string, extra: string[] = []) {
  const sub = join(dir.path, name);
  mkdirSync(sub);
  const origin = stampedImage(SIZE, 0);
  const rig = new Rig(sub, {
    devices: { disk: makeImage(join(sub, 'disk.img'), origin) },
    stores: [makeSparse(join(sub, 'store.img'), 64 * MiB)],
    chunkSize: '64K',
    extra,
  });
  return { origin, rig };
}

describe('merge speed', () => {
  const { origin, rig } = setup('cli');
  afterAll(() => rig.stop());

  it('refuses bad values, and a speed for no merge', async () => {
    await rig.start();
    await rig.createSnapshot('disk', 'a');
    for (const args of [
      ['merge', 'disk@a', '--speed', 'fast'],
      ['merge', 'disk@a', '--speed=-1'],
      ['merge', 'speed', 'disk@a', '1.5M'],
      ['merge', 'speed', 'disk@a'],
      ['merge', 'speed', 'disk@a', '1M', 'more'],
      ['merge', 'disk@a', 'extra'],
      ['merge', 'disk@a', '--on-next-start', '--speed', '1M'],
      ['merge', 'status', '--speed', '1M'],
    ]) {
      const r = await rig.cli(args);
      expect([r.code, r.stderr.split('\n')[0]], args.join(' ')).toEqual([
        2,
        expect.stringMatching(/^nbdsnap: error: /),
      ]);
    }
    expect((await rig.cli(['merge', 'speed', 'disk@a', 'x'])).stderr).toContain('merge speed "x" is not a size');
    for (const speed of [-1, 1.5, '1M', null, 2 ** 53]) {
      expect(await outcome(rig.ctl('merge.speed', { device: 'disk', name: 'a', speed })), String(speed)).toBe(
        'BAD_ARGUMENT',
      );
      expect(await outcome(rig.ctl('merge.start', { device: 'disk', name: 'a', speed })), String(speed)).toBe(
        'BAD_ARGUMENT',
      );
    }
    const none = await rig.cli(['merge', 'speed', 'disk@a', '1M']);
    expect([none.code, none.stderr.trim()]).toEqual([1, 'nbdsnap: error: no merge of disk@a in progress']);
    const nosnap = await rig.cli(['merge', 'speed', 'disk@nope', '1M']);
    expect([nosnap.code, nosnap.stderr.trim()]).toEqual([1, 'nbdsnap: error: no snapshot disk@nope']);
    // Nothing started.
    expect(await mergeStatus(rig)).toEqual([]);
    expect((await rig.list()).map((s) => `${s.name}:${s.state}`)).toEqual(['a:valid']);
    await rig.deleteSnapshot('disk', 'a');
  });

  it('--speed limits a merge, `merge speed` changes it, the bytes are right', async () => {
    const c = await rig.open('disk');
    await rig.createSnapshot('disk', 's');
    const snap = Buffer.from(origin);
    await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.6, seed: 21, firstSeq: 1 });
    const r = await rig.cli(['merge', 'disk@s', '--speed', '64K']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('limit 0.1 MiB/s');
    const [p] = await mergeStatus(rig);
    expect(p).toMatchObject({ snapshot: 'disk@s', state: 'merging', speed: 64 * KiB });
    expect(p?.merged).toBeLessThan(p?.total ?? 0);
    const text = await rig.cli(['merge', 'status']);
    expect(text.stdout).toMatch(/^disk@s: merging, \d+\/\d+ chunks merged, .*, limit 0\.1 MiB\/s$/m);
    // Reads through the origin are the snapshot's already.
    assertSame(await rig.readAll('disk'), snap, 'origin during the limited merge');

    const set = await rig.cli(['merge', 'speed', 'disk@s', '32K', '--json']);
    expect(set.code, set.stderr).toBe(0);
    expect(JSON.parse(set.stdout)).toMatchObject({ snapshot: 'disk@s', state: 'merging', speed: 32 * KiB });
    expect((await mergeStatus(rig))[0]).toMatchObject({ snapshot: 'disk@s', state: 'merging', speed: 32 * KiB });
    // 0: no limit (the merge may end before the status is read).
    const off = await rig.cli(['merge', 'speed', 'disk@s', '0']);
    expect(off.code, off.stderr).toBe(0);
    const left = await mergeStatus(rig);
    if (left.length > 0) expect(left[0]?.speed).toBe(0);
    await waitMergeDone(rig, 'disk@s');
    assertSame(await rig.readAll('disk'), snap, 'origin after the merge');
    snap.copy(origin);
    expect(await rig.list()).toEqual([]);
    await rig.closeClients();
  });
});

describe('serve --merge-speed', () => {
  const { origin, rig } = setup('serve', ['--merge-speed', '64K']);
  afterAll(() => rig.stop());

  it('is the default, and the speed of a merge resumed after a restart', async () => {
    await rig.start();
    const c = await rig.open('disk');
    await rig.createSnapshot('disk', 'r');
    const snap = Buffer.from(origin);
    await changeChunks(c, origin, { chunkSize: CHUNK, fraction: 0.6, seed: 22, firstSeq: 1 });
    await rig.closeClients();
    const started = await rig.ctl<{ speed: number }>('merge.start', { device: 'disk', name: 'r' });
    expect(started.speed).toBe(64 * KiB);
    // A speed given for this merge is not recorded: after a restart it runs at the default.
    await rig.ctl('merge.speed', { device: 'disk', name: 'r', speed: 128 * KiB });
    expect((await mergeStatus(rig))[0]).toMatchObject({ state: 'merging', speed: 128 * KiB });
    await rig.restart();
    assertSame(await rig.readAll('disk'), snap, 'origin right after the restart');
    expect((await mergeStatus(rig))[0]).toMatchObject({ snapshot: 'disk@r', state: 'merging', speed: 64 * KiB });
    await rig.ctl('merge.speed', { device: 'disk', name: 'r', speed: 0 });
    await waitMergeDone(rig, 'disk@r');
    assertSame(await rig.readAll('disk'), snap, 'origin after the resumed merge');
    expect(await rig.list()).toEqual([]);
  });

  it('a bad --merge-speed is a usage error', async () => {
    const r = await rig.cli(['serve', '--merge-speed', 'fast', join(dir.path, 'serve', 'disk.img')]);
    expect([r.code, r.stderr.split('\n')[0]]).toEqual([
      2,
      'nbdsnap: error: merge speed "fast" is not a size (e.g. 4096, 64K, 64M, 1G)',
    ]);
  });
});
