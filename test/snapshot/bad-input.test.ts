/**
 * Bad input gives one clear line and changes nothing:
 * - at start (non-zero exit, one `nbdsnap: error:` line on stderr): store ranges that overlap,
 *   a store on the origin image, a chunk size that is not a power of two;
 * - at run time, through the CLI (non-zero exit, one line; the server keeps serving, unchanged):
 *   a snapshot of an unknown device, a duplicate name, a bad name, deleting an unknown snapshot,
 *   appending a range that overlaps the store, one in the origin image, one smaller than a chunk;
 * - a connection still open to a snapshot that gets deleted answers EIO, never stale data.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { RunResult } from '../helpers/clients.ts';
import { freshPort } from '../helpers/server.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, nbdsnap, outcome, Rig, tempDir } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

const dir = tempDir('nbdsnap-bad-');
const disk = makeImage(join(dir.path, 'disk.img'), stampedImage(4 * MiB, 0));
const store = makeSparse(join(dir.path, 'store.img'), 16 * MiB);
afterAll(() => dir.cleanup());

/**
 * The run failed with exactly one `nbdsnap: error:` line (and, for a usage error, exit status 2,
 * the command's usage line); returns the error line.
 */
function oneError(r: RunResult): string {
  expect(r.signal, `still running:\n${r.stdout}`).toBeNull();
  expect(r.code, r.stdout).not.toBe(0);
  const lines = r.stderr.trim().split('\n');
  if (r.code === 2) expect(lines.pop()).toMatch(/^nbdsnap: usage: /);
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^nbdsnap: error: /);
  return lines[0] as string;
}

describe('refused at start', () => {
  const serve = (args: string[]) =>
    nbdsnap(['serve', `disk=${disk}`, ...args, '-p', String(freshPort()), '-b', '127.0.0.1'], 15_000);

  it('store ranges that overlap', async () => {
    const line = oneError(await serve(['--store', `${store}:0+4096`, '--store', `${store}:2048+4096`]));
    expect(line).toMatch(/overlaps/);
  });

  it('a store on the origin image', async () => {
    expect(oneError(await serve(['--store', `${disk}:4096+2048`]))).toMatch(/origin/);
  });

  it('a chunk size that is not a power of two, or out of range', async () => {
    expect(oneError(await serve(['--store', store, '--chunk-size', '48K']))).toMatch(/power of two/);
    expect(oneError(await serve(['--store', store, '--chunk-size', '2M']))).toMatch(/power of two/);
  });
});

describe('refused at run time, the server keeps serving', () => {
  const sub = join(dir.path, 'run');
  mkdirSync(sub);
  const origin = stampedImage(4 * MiB, 0);
  const rig = new Rig(sub, {
    devices: { disk: makeImage(join(sub, 'disk.img'), origin) },
    stores: [`${makeSparse(join(sub, 'store.img'), 16 * MiB)}:0+16384`],
    chunkSize: '4K',
  });
  const spare = makeSparse(join(sub, 'spare.img'), 4 * MiB);
  let snap: Buffer;
  afterAll(() => rig.stop());

  it('starts, with one snapshot', async () => {
    await rig.start();
    expect(await rig.createSnapshot('disk', 's1')).toEqual(['disk@s1']);
    snap = Buffer.from(origin);
    const c = await rig.open('disk');
    const data = stampedData(1, 4096, 64 * KiB);
    await c.write(4096, data);
    data.copy(origin, 4096);
  });

  // Through the CLI (the one line a user sees)...
  const cli: [string, string[], RegExp][] = [
    ['a snapshot of an unknown device', ['snapshot', 'create', 'nope', 's2'], /no device "nope"/],
    ['a snapshot with a name in use', ['snapshot', 'create', 'disk', 's1'], /already exists/],
    ['deleting an unknown snapshot', ['snapshot', 'delete', 'disk@missing'], /no snapshot disk@missing/],
    ['a range in the origin image', ['store', 'append', join(sub, 'disk.img')], /origin/],
  ];
  for (const [what, args, message] of cli) {
    it(`refuses ${what}`, async () => {
      expect(oneError(await rig.cli(args))).toMatch(message);
    });
  }
  // ... and straight on the control socket (the same errors, without a CLI start each).
  const control: [string, string, Record<string, unknown>, string, RegExp][] = [
    ['a bad snapshot name', 'snapshot.create', { devices: ['disk'], name: 'bad/name' }, 'BAD_ARGUMENT', /name/],
    ['deleting on an unknown device', 'snapshot.delete', { device: 'nope', name: 's1' }, 'NOT_FOUND', /no device/],
    [
      'a range overlapping the store',
      'store.append',
      { range: `${join(sub, 'store.img')}:8192+8192` },
      'BAD_ARGUMENT',
      /overlaps/,
    ],
    [
      'a range smaller than a chunk',
      'store.append',
      { range: `${spare}:0+4` },
      'BAD_ARGUMENT',
      /smaller than one chunk/,
    ],
    [
      'a range past the end of its file',
      'store.append',
      { range: `${spare}:8000+1000` },
      'BAD_ARGUMENT',
      /does not fit/,
    ],
  ];
  for (const [what, cmd, args, code, message] of control) {
    it(`refuses ${what}`, async () => {
      const err = await rig.ctl(cmd, args).then(
        () => undefined,
        (e: { code: string; message: string }) => e,
      );
      expect(err?.code).toBe(code);
      expect(err?.message).toMatch(message);
      expect(err?.message).not.toContain('\n');
    });
  }

  it('is unchanged and still serves', async () => {
    const list = await rig.list();
    expect(list.map((s) => `${s.export}:${s.state}`)).toEqual(['disk@s1:valid']);
    const status = await rig.ctl<{ ranges: { path: string }[] }>('store.status');
    expect(status.ranges).toHaveLength(1);
    assertSame(await rig.readAll('disk@s1'), snap, 'disk@s1');
    const c = await rig.open('disk');
    const data = stampedData(2, 100_000, 10_000);
    await c.write(100_000, data);
    data.copy(origin, 100_000);
    assertSame(await rig.readAll('disk'), origin, 'origin');
    // And a good append still works.
    const r = await rig.cli(['store', 'append', `${spare}:0+2048`]);
    expect(r.code, r.stderr).toBe(0);
  });

  it('answers EIO on a connection to a snapshot deleted under it', async () => {
    await rig.createSnapshot('disk', 'gone');
    const reader = await rig.open('disk@gone');
    const before = await reader.read(0, 64 * KiB);
    assertSame(before, origin.subarray(0, 64 * KiB), 'disk@gone before the delete');
    await rig.deleteSnapshot('disk', 'gone');
    // The origin changes; the deleted snapshot must not show it as its own content.
    const c = await rig.open('disk');
    const data = stampedData(3, 0, 64 * KiB);
    await c.write(0, data);
    data.copy(origin, 0);
    expect(await outcome(reader.read(0, 64 * KiB))).toBe('EIO');
  });
});
