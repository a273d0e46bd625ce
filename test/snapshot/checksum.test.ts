/**
 * Checksummed copies, with real servers and clients. One byte flipped inside a copied chunk in
 * the store file of a stopped server:
 * - `nbdsnap store check` exits 0 on the undamaged store, 1 naming the damaged slot after;
 * - after a restart, the snapshot's read of that chunk gets EIO (our client, nbdsh), reads of
 *   other chunks are exact, `snapshot list` shows `damaged: 1`, a `damaged` event is raised, and
 *   after another restart the chunk is still lost; a whole-export nbdcopy fails;
 * - `nbdsnap store scrub` on a running server finds damage made while it runs;
 * - a writable snapshot's private chunk keeps its checksum right across writes and restarts;
 * - merge refuses to write a damaged chunk into the origin: it fails naming the chunk.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, nbdsh, readAt, run, writeAt } from '../helpers/clients.ts';
import { mergeStatus, startMerge } from '../helpers/merge.ts';
import {
  assertSame,
  type EventWatcher,
  KiB,
  MiB,
  makeImage,
  makeSparse,
  nbdsnap,
  outcome,
  Rig,
  tempDir,
  watchEvents,
} from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

const CHUNK = 64 * KiB;
/** 64 whole chunks and a short last one (4 KiB): its checksum covers 4 KiB only. */
const SIZE = 64 * CHUNK + 4 * KiB;
const LAST = 64;

interface CheckJson {
  clean: boolean;
  journal: { ok: boolean };
  copies: { checked: number; damaged: number; lost: number };
  damaged: { slot: number; chunk: number; device: string; path: string; offset: number; snapshots: string[] }[];
  lost: { slot: number; chunk: number }[];
}

const dir = tempDir('nbdsnap-checksum-');
afterAll(() => dir.cleanup());

const origin = stampedImage(SIZE, 0);
const diskPath = makeImage(join(dir.path, 'disk.img'), origin);
const storePath = makeSparse(join(dir.path, 'store.img'), 16 * MiB);
const rig = new Rig(dir.path, { devices: { disk: diskPath }, stores: [storePath] });
/** The origin after the writes (what the origin export must read). */
const current = Buffer.from(origin);

/** Where the store file holds the copy of `chunk` of the original image (searched by content). */
function copyOffset(chunk: number): number {
  const want = origin.subarray(chunk * CHUNK, Math.min(SIZE, (chunk + 1) * CHUNK));
  const at = readFileSync(storePath).indexOf(want);
  if (at < 0) throw new Error(`no copy of chunk ${chunk} in the store`);
  return at;
}

function flipByte(offset: number): void {
  const b = readAt(storePath, offset, 1);
  writeAt(storePath, offset, Buffer.from([(b[0] as number) ^ 0x5a]));
}

async function check(): Promise<{ code: number | null; report: CheckJson; stdout: string }> {
  const r = await nbdsnap(['store', 'check', storePath, '--json']);
  return { code: r.code, report: JSON.parse(r.stdout) as CheckJson, stdout: r.stdout };
}

const snapRead = (offset: number, length: number) => rig.open('disk@s1').then((c) => c.read(offset, length));

describe('a damaged copy is never read as data', () => {
  let events: EventWatcher | undefined;
  let damagedAt = 0;
  afterAll(async () => {
    await events?.stop();
    await rig.stop();
  });

  beforeAll(async () => {
    await rig.start();
    await rig.createSnapshot('disk', 's1');
    const c = await rig.open('disk');
    for (const [i, chunk] of [2, 3, 5, 9, LAST].entries()) {
      const offset = chunk * CHUNK + 1024;
      const data = stampedData(1 + i, offset, Math.min(8 * KiB, SIZE - offset));
      data.copy(current, offset);
      await c.write(offset, data);
    }
    await c.flush();
    assertSame(await rig.readAll('disk@s1'), origin, 'snapshot before any damage');
    await rig.stop();
  });

  it('store check: clean before any damage (exit 0)', async () => {
    const { code, report } = await check();
    expect(report.clean).toBe(true);
    expect(report.copies).toMatchObject({ checked: 5, damaged: 0, lost: 0 });
    expect(code).toBe(0);
  });

  it('store check: exit 1 naming the slot of the flipped byte', async () => {
    damagedAt = copyOffset(3);
    flipByte(damagedAt + 777);
    const { code, report } = await check();
    expect(code).toBe(1);
    expect(report.clean).toBe(false);
    expect(report.damaged.map((d) => ({ chunk: d.chunk, offset: d.offset, snapshots: d.snapshots }))).toEqual([
      { chunk: 3, offset: damagedAt, snapshots: ['disk@s1'] },
    ]);
    const human = await nbdsnap(['store', 'check', storePath]);
    expect(human.code).toBe(1);
    expect(human.stdout).toContain(`damaged: slot ${report.damaged[0]?.slot} `);
  });

  it('the read of the damaged chunk gets EIO, with a damaged event; others read exact', async () => {
    await rig.start();
    events = await watchEvents(rig, 'disk');
    expect(await outcome(snapRead(3 * CHUNK + 4096, 4096))).toBe('EIO');
    const e = await events.waitFor('damaged');
    expect(e).toMatchObject({ device: 'disk', chunk: 3, snapshots: ['disk@s1'] });
    // Chunks held in the store (2, 5, the short last one) and read through (0) are exact.
    for (const chunk of [0, 2, 5, LAST]) {
      const len = Math.min(CHUNK, SIZE - chunk * CHUNK);
      const got = await snapRead(chunk * CHUNK, len);
      assertSame(got, origin.subarray(chunk * CHUNK, chunk * CHUNK + len), `chunk ${chunk}`);
    }
    // A request over chunks 2..4 fails whole; the origin is untouched.
    expect(await outcome(snapRead(2 * CHUNK, 3 * CHUNK))).toBe('EIO');
    assertSame(await rig.readAll('disk'), current, 'origin');
    const r = await nbdsh("out['read'] = attempt(h.pread, 512, 3 * 65536 + 100)", rig.uri('disk@s1'));
    expect(r.read).toBe('EIO');
    const list = await rig.list();
    expect(list.map((s) => ({ name: s.name, state: s.state, damaged: (s as { damaged?: number }).damaged }))).toEqual([
      { name: 's1', state: 'valid', damaged: 1 },
    ]);
    const human = await rig.cli(['snapshot', 'list']);
    expect(human.stdout).toContain('1 damaged');
  });

  it('a whole-export nbdcopy fails rather than copying wrong bytes', async () => {
    if (!hasTool('nbdcopy')) return;
    const out = makeSparse(join(dir.path, 'copy.img'), SIZE);
    const r = await run('nbdcopy', [rig.uri('disk@s1'), out]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Input\/output error/);
  });

  it('is still lost after a restart (LOST is replayed)', async () => {
    await events?.stop();
    events = undefined;
    await rig.restart();
    expect(await outcome(snapRead(3 * CHUNK, 512))).toBe('EIO');
    expect((await rig.list()).map((s) => (s as { damaged?: number }).damaged)).toEqual([1]);
    assertSame(await snapRead(5 * CHUNK, CHUNK), origin.subarray(5 * CHUNK, 6 * CHUNK), 'chunk 5');
  });

  it('store check is refused while the server holds the store, and changes nothing', async () => {
    const before = readFileSync(storePath);
    const { code, report, stdout } = await check();
    expect(code).toBe(1);
    expect(report.clean).toBe(false);
    expect(report.journal.ok).toBe(false);
    expect(stdout).toMatch(/not checked: .*(in use|lock|held|busy)/i);
    expect(readFileSync(storePath).equals(before)).toBe(true);
  });

  it('scrub finds damage made while the server runs, and records it', async () => {
    flipByte(copyOffset(9) + 60_000);
    const r = await rig.cli(['store', 'scrub', '--json']);
    expect(r.code).toBe(1);
    const summary = JSON.parse(r.stdout) as { checked: number; damaged: number; lostBefore: number; found: unknown[] };
    // The copy recorded lost before is not read again.
    expect(summary).toMatchObject({ checked: 4, damaged: 1, lostBefore: 1 });
    expect(summary.found).toEqual([{ device: 'disk', chunk: 9, slot: expect.any(Number), snapshots: ['disk@s1'] }]);
    expect(r.stderr).toContain('"checked":4');
    expect(await outcome(snapRead(9 * CHUNK, 512))).toBe('EIO');
    expect((await rig.list()).map((s) => (s as { damaged?: number }).damaged)).toEqual([2]);
    // rate-limited (--speed, as a merge's): the same report
    const again = await rig.cli(['store', 'scrub', '--speed', '256K']);
    expect(again.stdout).toContain('0 damaged, 2 recorded lost before');
    const bad = await rig.cli(['store', 'scrub', '--speed', 'fast']);
    expect([bad.code, bad.stderr]).toEqual([2, expect.stringMatching(/scrub speed/)]);
  });

  it('merge of a snapshot with chunks known lost is refused; the origin is untouched', async () => {
    const r = await rig.cli(['merge', 'disk@s1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('damaged chunks (3, 9)');
    expect((await rig.list()).map((s) => s.state)).toEqual(['valid']);
    assertSame(await rig.readAll('disk'), current, 'origin');
  });
});

describe('a merge that finds a damaged copy', () => {
  const sub = join(dir.path, 'm');
  mkdirSync(sub);
  const mdisk = makeImage(join(sub, 'disk.img'), origin);
  const mstore = makeSparse(join(sub, 'store.img'), 16 * MiB);
  const mrig = new Rig(sub, { devices: { disk: mdisk }, stores: [mstore] });
  const now = Buffer.from(origin);
  afterAll(() => mrig.stop());

  it('fails naming the chunk, and never writes it into the origin', async () => {
    await mrig.start();
    await mrig.createSnapshot('disk', 'm');
    const c = await mrig.open('disk');
    // Chunk 4's copy is not the last one made (not in the journal's last batch).
    for (const [i, chunk] of [1, 4, 7].entries()) {
      const data = stampedData(10 + i, chunk * CHUNK, CHUNK);
      data.copy(now, chunk * CHUNK);
      await c.write(chunk * CHUNK, data);
    }
    await c.flush();
    await mrig.stop();
    const want = origin.subarray(4 * CHUNK, 5 * CHUNK);
    const at = readFileSync(mstore).indexOf(want);
    expect(at).toBeGreaterThan(0);
    writeAt(mstore, at + 5, Buffer.from([(want[5] as number) ^ 1]));
    await mrig.start();
    const events = await watchEvents(mrig, 'disk');
    try {
      await startMerge(mrig, 'disk', 'm');
      let p = (await mergeStatus(mrig)).find((x) => x.snapshot === 'disk@m');
      for (let i = 0; i < 1000 && p?.state === 'merging'; i++) {
        await new Promise((r) => setTimeout(r, 20));
        p = (await mergeStatus(mrig)).find((x) => x.snapshot === 'disk@m');
      }
      expect(p).toMatchObject({ state: 'failed', failedChunk: 4 });
      expect(p?.error).toContain('damaged');
      expect(await events.waitFor('damaged')).toMatchObject({ chunk: 4, snapshots: ['disk@m'] });
      // The origin reads as the snapshot from the merge on: chunk 1 merged, chunk 4 unreadable.
      const o = await mrig.open('disk');
      assertSame(await o.read(CHUNK, CHUNK), origin.subarray(CHUNK, 2 * CHUNK), 'merged chunk 1');
      expect(await outcome(o.read(4 * CHUNK, 512))).toBe('EIO');
    } finally {
      await events.stop();
      await mrig.stop();
    }
    const disk = readFileSync(mdisk);
    assertSame(disk.subarray(CHUNK, 2 * CHUNK), origin.subarray(CHUNK, 2 * CHUNK), 'chunk 1 in the origin file');
    assertSame(disk.subarray(4 * CHUNK, 5 * CHUNK), now.subarray(4 * CHUNK, 5 * CHUNK), 'chunk 4 in the origin file');
  });
});

describe('store check refuses what it cannot check', () => {
  it('exit 1 for a path that does not exist and for a file that is not a store, 2 without a range', async () => {
    const missing = await nbdsnap(['store', 'check', join(dir.path, 'nowhere.img')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('nowhere.img');
    const blank = await nbdsnap(['store', 'check', makeSparse(join(dir.path, 'blank.img'), 4 * MiB)]);
    expect(blank.stdout).toContain('not an nbdsnap store');
    expect(blank.code).toBe(1);
    expect((await nbdsnap(['store', 'check'])).code).toBe(2);
  });
});

describe('a writable snapshot', () => {
  const sub = join(dir.path, 'w');
  const wrig = () =>
    new Rig(sub, {
      devices: { disk: makeImage(join(sub, 'disk.img'), stampedImage(4 * MiB, 0)) },
      stores: [makeSparse(join(sub, 'store.img'), 8 * MiB)],
    });

  it('keeps its private chunks verifiable across writes and restarts (redirect-on-write)', async () => {
    mkdirSync(sub);
    const r = wrig();
    await r.start();
    try {
      await r.createSnapshot('disk', 'w', true);
      const model = stampedImage(4 * MiB, 0);
      const c = await r.open('disk@w');
      for (let seq = 1; seq <= 6; seq++) {
        const offset = CHUNK + seq * 3 * KiB;
        const data = stampedData(seq, offset, 2 * KiB);
        data.copy(model, offset);
        await c.write(offset, data);
      }
      // A later private chunk: the one damaged below is not in the journal's last batch.
      const later = stampedData(7, 3 * CHUNK, 4 * KiB);
      later.copy(model, 3 * CHUNK);
      await c.write(3 * CHUNK, later);
      await c.flush();
      assertSame(await r.readAll('disk@w'), model, 'before restart');
      await r.restart('SIGKILL');
      assertSame(await r.readAll('disk@w'), model, 'after SIGKILL');
      await r.stop();
      const checked = await nbdsnap(['store', 'check', join(sub, 'store.img'), '--json']);
      expect((JSON.parse(checked.stdout) as CheckJson).copies).toMatchObject({ checked: 2, damaged: 0 });
      expect(checked.code).toBe(0);
      // Damage the private chunk: EIO, counted; a write of the whole chunk makes it whole again.
      const storeFile = join(sub, 'store.img');
      const at = readFileSync(storeFile).indexOf(model.subarray(CHUNK, 2 * CHUNK));
      expect(at).toBeGreaterThan(0);
      writeAt(storeFile, at + 100, Buffer.from([(model[CHUNK + 100] as number) ^ 0xff]));
      await r.start();
      const w = await r.open('disk@w');
      expect(await outcome(w.read(CHUNK + 8 * KiB, 512))).toBe('EIO');
      expect(await outcome(w.write(CHUNK + 512, Buffer.alloc(512, 1)))).toBe('EIO');
      expect((await r.list()).map((s) => (s as { damaged?: number }).damaged)).toEqual([1]);
      const whole = stampedData(9, CHUNK, CHUNK);
      whole.copy(model, CHUNK);
      await w.write(CHUNK, whole);
      assertSame(await r.readAll('disk@w'), model, 'after the whole chunk was written again');
      expect((await r.list()).map((s) => (s as { damaged?: number }).damaged)).toEqual([0]);
    } finally {
      await r.stop();
    }
  });
});
