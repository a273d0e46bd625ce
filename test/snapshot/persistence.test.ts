/**
 * Persistence of snapshots and of the store:
 * - a graceful restart (SIGTERM) and a crash (SIGKILL) bring back every snapshot (read-only and
 *   writable, with its own writes) exactly, and not the deleted ones;
 * - a range appended at run time (`nbdsnap store append PATH:START+COUNT`) is recorded: the
 *   server finds it again without it on the command line, copies in it read back exact, and
 *   nothing outside the given sectors of its file is touched;
 * - damaged metadata (both copies of range 0's label, a record in the middle of the journal, the header
 *   of a journal block in the middle of the chain) stops the start with one clear line on
 *   stderr (`nbdsnap: error: ...`) and a non-zero exit: never served as if nothing happened; one
 *   damaged label copy is survived (the other copy is used);
 * - `--transient` snapshots work and are gone after a restart.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { TransmissionFlag } from '../../src/nbd-protocol/index.ts';
import { BLOCK_HEADER, decodeBlockHeader, decodeRecord } from '../../src/store/records.ts';
import { decodeSuperblocks, SUPERBLOCK_AREA, SUPERBLOCK_COPY } from '../../src/store/superblock.ts';
import { writeAt } from '../helpers/clients.ts';
import { freshPort } from '../helpers/server.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, nbdsnap, outcome, Rig, tempDir } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

const dir = tempDir('nbdsnap-persist-');
afterAll(() => dir.cleanup());

/** A directory of its own for each rig (its control socket lives there). */
function subdir(name: string): string {
  const path = join(dir.path, name);
  mkdirSync(path);
  return path;
}

/**
 * Stamped writes at chunks `first`, `first + step`, ... (`count` of them, at once), each starting
 * a few sectors into its chunk: a whole chunk long, so across the next boundary, when `step` > 1;
 * shorter when `step` is 1, so that no two overlap. Applied to `model`, then flushed.
 */
async function writeChunks(
  c: NbdClient,
  model: Buffer,
  seq: number,
  chunk: number,
  first: number,
  count: number,
  step = 1,
): Promise<void> {
  await Promise.all(
    Array.from({ length: count }, (_, i) => {
      const offset = (first + i * step) * chunk + ((seq + i) % 7) * 512;
      const data = stampedData(seq + i, offset, step > 1 ? chunk : chunk - 7 * 512);
      data.copy(model, offset);
      return c.write(offset, data);
    }),
  );
  await c.flush();
}

describe('snapshots come back after a restart', () => {
  const SIZE = 8 * MiB + 2.5 * KiB;
  const CHUNK = 16 * KiB;
  const sub = subdir('a');
  const origin = stampedImage(SIZE, 0);
  const rig = new Rig(sub, {
    devices: { disk: makeImage(join(sub, 'disk.img'), origin) },
    stores: [makeSparse(join(sub, 'store.img'), 32 * MiB)],
    chunkSize: '16K',
  });
  const models = new Map<string, Buffer>();
  afterAll(() => rig.stop());

  async function checkAll(what: string): Promise<void> {
    const list = await rig.list();
    expect(
      list.map((s) => `${s.name}:${s.state}:${s.writable ? 'rw' : 'ro'}`),
      what,
    ).toEqual(['p1:valid:ro', 'p2:valid:rw', 'p3:valid:ro']);
    assertSame(await rig.readAll('disk'), origin, `origin ${what}`);
    for (const [n, m] of models) assertSame(await rig.readAll(`disk@${n}`), m, `disk@${n} ${what}`);
    const p2 = await rig.open('disk@p2');
    const p1 = await rig.open('disk@p1');
    expect(p2.transmissionFlags & TransmissionFlag.READ_ONLY).toBe(0);
    expect(p1.transmissionFlags & TransmissionFlag.READ_ONLY).not.toBe(0);
    await rig.closeClients();
  }

  it('takes snapshots (one writable, one deleted) between writes', async () => {
    await rig.start();
    const c = await rig.open('disk');
    await writeChunks(c, origin, 1, CHUNK, 0, 20, 3);
    await rig.createSnapshot('disk', 'p0');
    await rig.deleteSnapshot('disk', 'p0');
    await rig.createSnapshot('disk', 'p1');
    models.set('p1', Buffer.from(origin));
    await writeChunks(c, origin, 100, CHUNK, 1, 60, 2);
    await rig.createSnapshot('disk', 'p2', true);
    models.set('p2', Buffer.from(origin));
    const w = await rig.open('disk@p2');
    await writeChunks(w, models.get('p2') as Buffer, 200, CHUNK, 5, 30, 4);
    await writeChunks(c, origin, 300, CHUNK, 0, 100, 5);
    await rig.createSnapshot('disk', 'p3');
    models.set('p3', Buffer.from(origin));
    await writeChunks(c, origin, 400, CHUNK, 2, 200, 2);
    await rig.closeClients();
    await checkAll('before any restart');
  });

  it('after SIGTERM', async () => {
    expect(await rig.restart('SIGTERM')).toBeDefined();
    await checkAll('after SIGTERM');
    const c = await rig.open('disk');
    await writeChunks(c, origin, 500, CHUNK, 3, 100, 3);
    const w = await rig.open('disk@p2');
    await writeChunks(w, models.get('p2') as Buffer, 600, CHUNK, 6, 40, 3);
  });

  it('after SIGKILL', async () => {
    await rig.restart('SIGKILL');
    await checkAll('after SIGKILL');
  });
});

describe('a range appended at run time', () => {
  const CHUNK = 4 * KiB;
  const sub = subdir('b');
  const origin = stampedImage(2 * MiB, 0);
  const store1 = makeSparse(join(sub, 'store1.img'), 128 * KiB + 64 * CHUNK);
  const store2 = join(sub, 'store2.img');
  const rig = new Rig(sub, {
    devices: { d: makeImage(join(sub, 'disk.img'), origin) },
    stores: [store1],
    chunkSize: '4K',
  });
  let model: Buffer;
  afterAll(() => rig.stop());

  it('takes copies once the first range is full, and is found again on restart', async () => {
    // Data around the range, which itself is blank (only a blank range may be appended).
    const around = Buffer.alloc(4 * MiB, 0xee);
    around.fill(0, MiB, 3 * MiB);
    writeFileSync(store2, around);
    await rig.start();
    const c = await rig.open('d');
    await rig.createSnapshot('d', 'a1');
    model = Buffer.from(origin);
    await writeChunks(c, origin, 1, CHUNK, 0, 40);
    const r = await rig.cli(['store', 'append', `${store2}:2048+4096`]);
    expect(r.code, r.stderr).toBe(0);
    // 140 copies in all: far more than the first range holds.
    await writeChunks(c, origin, 100, CHUNK, 40, 100);
    const status = await rig.ctl<{ ranges: { path: string; startSector: number; sectors: number }[] }>('store.status');
    expect(status.ranges.slice(1)).toEqual([
      { path: store2, startSector: 2048, sectors: 4096, bytes: 2 * MiB, slots: 480 },
    ]);
    expect((await rig.list()).map((s) => s.state)).toEqual(['valid']);
    assertSame(await rig.readAll('d@a1'), model, 'd@a1 with copies in both ranges');
    const file = readFileSync(store2);
    expect(file.subarray(0, MiB).every((b) => b === 0xee)).toBe(true);
    expect(file.subarray(3 * MiB).every((b) => b === 0xee)).toBe(true);
    expect(file.subarray(MiB, 3 * MiB).every((b) => b === 0xee)).toBe(false);
  });

  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    it(`is part of the store after ${signal}, without being named on the command line`, async () => {
      expect(rig.args.join(' ')).not.toContain('store2');
      await rig.restart(signal);
      const status = await rig.ctl<{ ranges: { path: string; startSector: number }[] }>('store.status');
      expect(status.ranges.map((r) => `${r.path}:${r.startSector}`)).toEqual([`${store1}:0`, `${store2}:2048`]);
      assertSame(await rig.readAll('d@a1'), model, `d@a1 after ${signal}`);
      assertSame(await rig.readAll('d'), origin, `origin after ${signal}`);
    });
  }
});

describe('damaged metadata', () => {
  const CHUNK = 4 * KiB;
  const sub = subdir('c');
  const origin = stampedImage(4 * MiB, 0);
  const store = makeSparse(join(sub, 'store.img'), 16 * MiB);
  const backup = join(sub, 'store.bak');
  const rig = new Rig(sub, {
    devices: { disk: makeImage(join(sub, 'disk.img'), origin) },
    stores: [store],
    chunkSize: '4K',
  });
  let model: Buffer;
  afterAll(() => rig.stop());

  /** Start with the rig's arguments; expect a refusal with one `nbdsnap: error:` line. */
  async function refused(): Promise<string> {
    const r = await nbdsnap(['serve', ...rig.args, '-p', String(freshPort()), '-b', '127.0.0.1'], 15_000);
    expect(r.signal, `the server started on damaged metadata:\n${r.stdout}`).toBeNull();
    expect(r.code).not.toBe(0);
    const lines = r.stderr.trim().split('\n');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^nbdsnap: error: /);
    return lines[0] as string;
  }

  /** The journal's blocks: store offset of each, in chain order. */
  function journal(): number[] {
    const buf = readFileSync(store);
    const sb = decodeSuperblocks(buf.subarray(0, SUPERBLOCK_COPY), buf.subarray(SUPERBLOCK_COPY, SUPERBLOCK_AREA));
    if (sb.state !== 'valid') throw new Error('no superblock');
    const out: number[] = [];
    for (let slot = sb.sb.firstJournalSlot ?? 0, i = 0; ; i++) {
      const at = SUPERBLOCK_AREA + slot * CHUNK;
      const h = decodeBlockHeader(buf.subarray(at, at + CHUNK));
      if (h === undefined || h.index !== i) return out;
      out.push(at);
      slot = h.next;
    }
  }

  it('builds a journal of several blocks', async () => {
    await rig.start();
    const c = await rig.open('disk');
    await rig.createSnapshot('disk', 'm1');
    model = Buffer.from(origin);
    for (let i = 0; i < 8; i++) await writeChunks(c, origin, 1 + 100 * i, CHUNK, i * 100, 60);
    await rig.stop();
    expect(journal().length).toBeGreaterThanOrEqual(3);
    copyFileSync(store, backup);
  });

  it('refuses both superblock copies damaged', async () => {
    writeAt(store, 40, Buffer.from('XX'));
    writeAt(store, SUPERBLOCK_COPY + 40, Buffer.from('XX'));
    expect(await refused()).toMatch(/the store's label is unreadable/);
  });

  it('uses the other copy when one superblock copy is damaged', async () => {
    copyFileSync(backup, store);
    const buf = readFileSync(store);
    const gen = (at: number) => buf.readUInt32LE(at + 20);
    writeAt(store, gen(0) > gen(SUPERBLOCK_COPY) ? 40 : SUPERBLOCK_COPY + 40, Buffer.from('XX'));
    await rig.start();
    assertSame(await rig.readAll('disk@m1'), model, 'disk@m1 from the older superblock copy');
    await rig.stop();
  });

  it('refuses a damaged record in the middle of the journal', async () => {
    copyFileSync(backup, store);
    const block = journal()[0] as number;
    const buf = readFileSync(store).subarray(block, block + CHUNK);
    const offsets: number[] = [];
    for (let pos = BLOCK_HEADER; ; ) {
      const r = decodeRecord(buf, pos);
      if ('bad' in r) break;
      offsets.push(pos);
      pos += r.size;
    }
    const victim = offsets[Math.floor(offsets.length / 2)] as number;
    writeAt(store, block + victim + 16, Buffer.from([(buf[victim + 16] as number) ^ 0xff]));
    expect(await refused()).toMatch(/journal is damaged/);
  });

  it('refuses a damaged header of a journal block in the middle of the chain', async () => {
    copyFileSync(backup, store);
    const block = journal()[1] as number;
    writeAt(store, block + 4, Buffer.from([0x7f]));
    expect(await refused()).toMatch(/journal/);
  });

  it('refuses one byte changed in the last batch before a clean stop', async () => {
    copyFileSync(backup, store);
    const image = readFileSync(store);
    const records: { at: number; type: string }[] = [];
    for (const block of journal()) {
      for (let pos = BLOCK_HEADER; ; ) {
        const r = decodeRecord(image.subarray(block, block + CHUNK), pos);
        if ('bad' in r) break;
        records.push({ at: block + pos, type: r.record.type });
        pos += r.size;
      }
    }
    // ..., the last state record, its batch's COMMIT, then the CLEAN batch: CLEAN, COMMIT.
    expect(records.slice(-3).map((r) => r.type)).toEqual(['COMMIT', 'CLEAN', 'COMMIT']);
    const victim = (records.at(-4) as { at: number }).at + 16;
    writeAt(store, victim, Buffer.from([(image[victim] as number) ^ 0xff]));
    expect(await refused()).toMatch(/journal is damaged/);
  });

  it('serves again once the store is whole', async () => {
    copyFileSync(backup, store);
    await rig.start();
    assertSame(await rig.readAll('disk@m1'), model, 'disk@m1');
    assertSame(await rig.readAll('disk'), origin, 'origin');
  });
});

describe('--transient', () => {
  const sub = subdir('d');
  const origin = stampedImage(2 * MiB + 512, 0);
  const rig = new Rig(sub, {
    devices: { disk: makeImage(join(sub, 'disk.img'), origin) },
    stores: [makeSparse(join(sub, 'store.img'), 8 * MiB)],
    chunkSize: '4K',
    transient: true,
  });
  afterAll(() => rig.stop());

  it('snapshots work, and are gone after a restart', async () => {
    await rig.start();
    const c = await rig.open('disk');
    await rig.createSnapshot('disk', 't1');
    const m1 = Buffer.from(origin);
    await writeChunks(c, origin, 1, 4 * KiB, 0, 100, 3);
    await rig.createSnapshot('disk', 't2', true);
    const m2 = Buffer.from(origin);
    await writeChunks(await rig.open('disk@t2'), m2, 500, 4 * KiB, 1, 50, 5);
    await writeChunks(c, origin, 1000, 4 * KiB, 2, 100, 2);
    assertSame(await rig.readAll('disk@t1'), m1, 'disk@t1');
    assertSame(await rig.readAll('disk@t2'), m2, 'disk@t2');
    expect((await rig.ctl<{ transient: boolean }>('store.status')).transient).toBe(true);

    await rig.restart('SIGTERM');
    expect(await rig.list()).toEqual([]);
    assertSame(await rig.readAll('disk'), origin, 'origin after the restart');
    expect(await outcome(NbdClient.open(rig.uri('disk@t1')))).toBe('NOT_FOUND');
  });
});
