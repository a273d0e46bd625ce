/**
 * Identity of the store's ranges, with real servers (issue 9, section 1): every range carries a
 * label, the ranges are matched by their labels, and nothing is formatted implicitly except a
 * range that reads as all zeros.
 * - a two-range store restarted with only its second range, with its ranges in the wrong order,
 *   or with a range of another store is refused with one line, and neither range is written;
 *   restarted with only its first range, its snapshot reads exactly; a range moved to a new path
 *   is found there by its label once given, and then recorded there;
 * - an ext4 image (real mkfs.ext4) and a file of random data given as --store, or appended at
 *   run time, are refused and unchanged; `nbdsnap store format` makes them usable (the ext4
 *   image only with --force);
 * - both label copies of range 0 damaged, or its first 128 KiB zeroed: refused, nothing
 *   rewritten;
 * - `--transient` on a persistent store is refused and the store is unchanged: the persistent
 *   snapshot still reads exactly at the next normal start;
 * - a loop device is read whole to prove it blank (skipped without root and losetup, except
 *   under CI=true, where it must run).
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { NbdClient } from '../../src/client/nbd-client.ts';
import { hasTool, pattern, type RunResult, sha256, writeAt } from '../helpers/clients.ts';
import { freshPort } from '../helpers/server.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, nbdsnap, Rig, tempDir } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

const CHUNK = 4 * KiB;
const dir = tempDir('nbdsnap-identity-');
afterAll(() => dir.cleanup());

function subdir(name: string): string {
  const path = join(dir.path, name);
  mkdirSync(path);
  return path;
}

/** One stamped write into each of chunks [from, to), flushed; applied to `model`. */
async function writeChunks(c: NbdClient, model: Buffer, seq: number, from: number, to: number): Promise<void> {
  for (let i = from; i < to; i++) {
    const data = stampedData(seq + i, i * CHUNK + 512, 1024);
    data.copy(model, i * CHUNK + 512);
    await c.write(i * CHUNK + 512, data);
  }
  await c.flush();
}

/** `nbdsnap serve ARGS` expected to refuse: one `nbdsnap: error:` line, non-zero exit; returns it. */
async function refused(args: string[]): Promise<string> {
  const r = await nbdsnap(['serve', ...args, '-p', String(freshPort()), '-b', '127.0.0.1'], 15_000);
  return oneError(r, 'the server started');
}

function oneError(r: RunResult, what: string): string {
  expect(r.signal, `${what}:\n${r.stdout}`).toBeNull();
  expect(r.code, r.stdout).not.toBe(0);
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^nbdsnap: error: /);
  return lines[0] as string;
}

const hashes = (paths: string[]): string[] => paths.map((p) => sha256(p));

describe('a store of two ranges', () => {
  const sub = subdir('two');
  const origin = stampedImage(2 * MiB, 0);
  const disk = makeImage(join(sub, 'disk.img'), origin);
  const r0 = makeSparse(join(sub, 'r0.img'), 128 * KiB + 32 * CHUNK);
  const r1 = makeSparse(join(sub, 'r1.img'), 4 * MiB);
  const rig = new Rig(sub, { devices: { disk }, stores: [r0, r1], chunkSize: '4K' });
  let model: Buffer;
  let before: string[];
  afterAll(() => rig.stop());

  it('holds a snapshot with copies in both ranges', async () => {
    await rig.start();
    await rig.createSnapshot('disk', 's1');
    model = Buffer.from(origin);
    await writeChunks(await rig.open('disk'), origin, 1, 0, 100);
    const status = await rig.ctl<{ ranges: { slots: number }[] }>('store.status');
    expect(status.ranges).toHaveLength(2);
    assertSame(await rig.readAll('disk@s1'), model, 'disk@s1');
    await rig.stop();
    before = hashes([r0, r1, disk]);
  });

  it('restarted with only its second range: refused, naming the first; neither range written', async () => {
    const line = await refused([`disk=${disk}`, '--store', r1]);
    expect(line).toMatch(
      /r1\.img:0\+8192 is range 1 of store [0-9a-f-]{36}; give its first range .*r0\.img:0\+512 first/,
    );
    expect(hashes([r0, r1, disk])).toEqual(before);
  });

  it('with its ranges in the wrong order: refused, nothing written', async () => {
    expect(await refused([`disk=${disk}`, '--store', r1, '--store', r0])).toMatch(/is range 1 of store/);
    expect(hashes([r0, r1, disk])).toEqual(before);
  });

  it('with a range of another store: refused, nothing written to any', async () => {
    const alien = makeSparse(join(sub, 'alien.img'), 4 * MiB);
    const r = await nbdsnap(['store', 'format', alien, '--chunk-size', '4K']);
    expect(r.code, r.stderr).toBe(0);
    const alienHash = sha256(alien);
    expect(await refused([`disk=${disk}`, '--store', r0, '--store', alien])).toMatch(/belongs to another store/);
    expect(await refused([`disk=${disk}`, '--store', alien, '--store', r1])).toMatch(
      /belongs to another store|range 1 of store/,
    );
    expect(hashes([r0, r1, disk])).toEqual(before);
    expect(sha256(alien)).toBe(alienHash);
  });

  it('restarted with only its first range: the second is found, the snapshot reads exactly', async () => {
    const only = new Rig(subdir('two-first'), { devices: { disk }, stores: [r0] });
    await only.start();
    try {
      const status = await only.ctl<{ ranges: { path: string }[] }>('store.status');
      expect(status.ranges.map((x) => x.path)).toEqual([r0, r1]);
      expect((await only.list()).map((s) => `${s.name}:${s.state}`)).toEqual(['s1:valid']);
      assertSame(await only.readAll('disk@s1'), model, 'disk@s1 started with the first range only');
      assertSame(await only.readAll('disk'), origin, 'origin');
    } finally {
      await only.stop();
    }
  });

  it('a recorded range that is gone: refused, naming it', async () => {
    const saved = join(sub, 'r1.saved');
    copyFileSync(r1, saved);
    writeFileSync(r1, '');
    const line = await refused([`disk=${disk}`, '--store', r0]);
    expect(line).toMatch(/range 1 of store .* is missing/);
    copyFileSync(saved, r1);
  });

  it('given at a new path: matched by its label, and the record follows it', async () => {
    const moved = join(sub, 'r1-moved.img');
    renameSync(r1, moved);
    try {
      expect(await refused([`disk=${disk}`, '--store', r0])).toMatch(/range 1 of store .* is missing/);
      for (const [name, stores] of [
        ['moved-both', [r0, moved]],
        ['moved-first', [r0]],
      ] as const) {
        const m = new Rig(subdir(name), { devices: { disk }, stores: [...stores] });
        await m.start();
        try {
          const status = await m.ctl<{ ranges: { path: string }[] }>('store.status');
          expect(status.ranges.map((x) => x.path)).toEqual([r0, moved]);
          assertSame(await m.readAll('disk@s1'), model, `disk@s1 with the range moved (${name})`);
        } finally {
          await m.stop();
        }
      }
    } finally {
      renameSync(moved, r1);
    }
  });

  it('--transient on it: refused, the store unchanged; the snapshot reads exactly at the next normal start', async () => {
    const now = hashes([r0, r1]);
    expect(await refused([`disk=${disk}`, '--store', r0, '--store', r1, '--transient'])).toMatch(
      /holds persistent store [0-9a-f-]{36} with its snapshots; --transient would destroy them/,
    );
    // Even with a blank range first: a later persistent range is never written to.
    const blank = makeSparse(join(sub, 'blank.img'), 4 * MiB);
    expect(await refused([`disk=${disk}`, '--store', blank, '--store', r1, '--transient'])).toMatch(
      /--transient would destroy them/,
    );
    expect(hashes([r0, r1])).toEqual(now);
    await rig.start();
    expect((await rig.list()).map((s) => `${s.name}:${s.state}`)).toEqual(['s1:valid']);
    assertSame(await rig.readAll('disk@s1'), model, 'disk@s1 after the refused --transient start');
    await rig.stop();
  });
});

describe('ranges that are not blank', () => {
  const sub = subdir('foreign');
  const origin = stampedImage(MiB, 0);
  const disk = makeImage(join(sub, 'disk.img'), origin);
  const ext4 = join(sub, 'ext4.img');
  const random = makeImage(join(sub, 'random.img'), pattern(8 * MiB, 7));
  const hasMkfs = hasTool('mkfs.ext4');

  it.skipIf(!hasMkfs)('an ext4 image is refused as --store and unchanged', async () => {
    execFileSync('mkfs.ext4', ['-q', '-F', ext4, '8M'], { stdio: 'ignore' });
    const h = sha256(ext4);
    expect(await refused([`disk=${disk}`, '--store', ext4])).toMatch(
      /ext4\.img:0\+16384 holds an ext2\/3\/4 filesystem; refusing to use it .*nbdsnap store format .*--force/,
    );
    expect(sha256(ext4)).toBe(h);
  });

  it('a file of random data is refused as --store and unchanged', async () => {
    const h = sha256(random);
    expect(await refused([`disk=${disk}`, '--store', random])).toMatch(/random\.img:0\+16384 is not blank/);
    expect(sha256(random)).toBe(h);
  });

  it('one non-zero byte in the middle of a sparse file makes it not blank', async () => {
    const almost = makeSparse(join(sub, 'almost.img'), 64 * MiB);
    writeAt(almost, 40 * MiB + 3, Buffer.from([1]));
    const h = sha256(almost);
    expect(await refused([`disk=${disk}`, '--store', almost])).toMatch(/is not blank/);
    expect(sha256(almost)).toBe(h);
  });

  it.skipIf(!hasMkfs)('a running server refuses to append them, and neither is changed', async () => {
    const rig = new Rig(subdir('foreign-run'), {
      devices: { disk },
      stores: [makeSparse(join(sub, 'store.img'), 4 * MiB)],
      chunkSize: '4K',
    });
    await rig.start();
    try {
      const before = hashes([ext4, random]);
      expect(oneError(await rig.cli(['store', 'append', ext4]), 'appended')).toMatch(/ext2\/3\/4 filesystem/);
      expect(oneError(await rig.cli(['store', 'append', random]), 'appended')).toMatch(/is not blank/);
      expect(hashes([ext4, random])).toEqual(before);
      expect((await rig.ctl<{ ranges: unknown[] }>('store.status')).ranges).toHaveLength(1);
    } finally {
      await rig.stop();
    }
  });

  it.skipIf(!hasMkfs)('nbdsnap store format makes them usable (ext4 only with --force)', async () => {
    const h = sha256(ext4);
    const noForce = await nbdsnap(['store', 'format', ext4]);
    expect(oneError(noForce, 'formatted')).toMatch(
      /holds an ext2\/3\/4 filesystem; refusing to format it without --force/,
    );
    expect(sha256(ext4)).toBe(h);
    const forced = await nbdsnap(['store', 'format', ext4, '--force', '--chunk-size', '4K']);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stdout).toMatch(/formatted persistent store [0-9a-f-]{36}/);
    const plain = await nbdsnap(['store', 'format', random, '--chunk-size', '4K']);
    expect(plain.code, plain.stderr).toBe(0);
    // Once formatted, a persistent store is "another nbdsnap store": --force again to reformat.
    expect(oneError(await nbdsnap(['store', 'format', random]), 'reformatted')).toMatch(/persistent nbdsnap store/);

    for (const [name, store] of [
      ['ext4', ext4],
      ['random', random],
    ] as const) {
      const model = Buffer.from(origin);
      const live = Buffer.from(origin);
      const rig = new Rig(subdir(`formatted-${name}`), {
        devices: { disk: makeImage(join(sub, `disk-${name}.img`), live) },
        stores: [store],
      });
      await rig.start();
      try {
        await rig.createSnapshot('disk', 'f1');
        await writeChunks(await rig.open('disk'), live, 1, 0, 64);
        await rig.restart('SIGKILL');
        assertSame(await rig.readAll('disk@f1'), model, `disk@f1 on the formatted ${store}`);
      } finally {
        await rig.stop();
      }
    }
  });
});

describe('damaged labels of range 0', () => {
  const sub = subdir('damaged');
  const origin = stampedImage(MiB, 0);
  const disk = makeImage(join(sub, 'disk.img'), origin);
  const store = makeSparse(join(sub, 'store.img'), 8 * MiB);
  const saved = join(sub, 'store.saved');
  const rig = new Rig(sub, { devices: { disk }, stores: [store], chunkSize: '4K' });
  let model: Buffer;
  afterAll(() => rig.stop());

  it('a store with a snapshot', async () => {
    await rig.start();
    await rig.createSnapshot('disk', 'd1');
    model = Buffer.from(origin);
    await writeChunks(await rig.open('disk'), origin, 1, 0, 20);
    await rig.stop();
    copyFileSync(store, saved);
  });

  it('both copies damaged: refused, nothing rewritten', async () => {
    writeAt(store, 40, Buffer.from('XX'));
    writeAt(store, 64 * KiB + 40, Buffer.from('XX'));
    const h = sha256(store);
    expect(await refused(rig.args)).toMatch(/the store's label is unreadable .*refusing to use or reformat it/);
    expect(await refused([...rig.args, '--transient'])).toMatch(/label is unreadable/);
    expect(oneError(await nbdsnap(['store', 'format', store]), 'formatted')).toMatch(/unreadable.*without --force/);
    expect(sha256(store)).toBe(h);
  });

  it('both magics damaged: refused, nothing rewritten', async () => {
    copyFileSync(saved, store);
    writeAt(store, 0, Buffer.from('X'));
    writeAt(store, 64 * KiB, Buffer.from('X'));
    const h = sha256(store);
    expect(await refused(rig.args)).toMatch(/the store's label is unreadable/);
    expect(sha256(store)).toBe(h);
  });

  it('the first 128 KiB zeroed: refused, nothing rewritten', async () => {
    copyFileSync(saved, store);
    writeAt(store, 0, Buffer.alloc(128 * KiB));
    const h = sha256(store);
    expect(await refused(rig.args)).toMatch(/the store's label is unreadable/);
    expect(sha256(store)).toBe(h);
  });

  it('whole again: the snapshot reads exactly', async () => {
    copyFileSync(saved, store);
    await rig.start();
    assertSame(await rig.readAll('disk@d1'), model, 'disk@d1');
  });
});

/** A loop device over `file` (detached by the caller), or undefined where there is none. */
function attachLoop(file: string): string | undefined {
  try {
    return execFileSync('losetup', ['-f', '--show', file], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return undefined;
  }
}

const canLoop = hasTool('losetup') && process.getuid?.() === 0;
describe.skipIf(!canLoop && process.env.CI !== 'true')('a block device range (loop device)', () => {
  const sub = subdir('loop');
  const disk = makeImage(join(sub, 'disk.img'), stampedImage(MiB, 0));
  const loops: string[] = [];
  afterAll(() => {
    for (const l of loops) execFileSync('losetup', ['-d', l]);
  });

  it('read whole: blank is formatted, one non-zero byte is refused and left unchanged', async () => {
    const blankFile = makeSparse(join(sub, 'blank.img'), 64 * MiB);
    const dataFile = makeSparse(join(sub, 'data.img'), 64 * MiB);
    writeAt(dataFile, 40 * MiB + 5, Buffer.from([9]));
    const blank = attachLoop(blankFile);
    const data = attachLoop(dataFile);
    if (blank === undefined || data === undefined) throw new Error('no loop device (needed under CI=true)');
    loops.push(blank, data);
    const h = sha256(dataFile);
    expect(await refused([`disk=${disk}`, '--store', data])).toMatch(/\/dev\/loop\d+:0\+131072 is not blank/);
    expect(sha256(dataFile)).toBe(h);
    const rig = new Rig(subdir('loop-rig'), { devices: { disk }, stores: [blank], chunkSize: '4K' });
    await rig.start();
    try {
      expect((await rig.ctl<{ ranges: { path: string }[] }>('store.status')).ranges.map((r) => r.path)).toEqual([
        blank,
      ]);
    } finally {
      await rig.stop();
    }
  });
});
