/**
 * The metadata journal without a server: a StoreSpace over a temporary file whose free slots hold
 * junk (as freed data slots do), many batches across several blocks, then replay after a clean
 * stop, after a crash, after a crash that tore the last batch (sectors written in any subset, at
 * 512-byte granularity, as the journal's crash model says), and after damage (one byte changed).
 * Positions in the file come from comparing copies of the file taken at every sync, so nothing
 * here depends on where the store puts its slots.
 */
import { closeSync, ftruncateSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdsnapError } from '../../src/errors.ts';
import { Journal, type JournalOpenOptions } from '../../src/store/journal.ts';
import { decodeRecord, type JournalRecord, RECORD_MAGIC } from '../../src/store/records.ts';
import { StoreSpace } from '../../src/store/space.ts';
import { tempDir } from '../helpers/server.ts';

const dir = tempDir('nbdsnap-journal-');
afterAll(() => dir.cleanup());

const CHUNK = 4096;
const SLOTS = 64;
/** Room before the slots (the store's label or superblock area; the space decides where slots start). */
const RESERVED = 128 * 1024;
const SECTOR = 512;

/** A store space over `path`: the one place that knows how to build one. */
class TestSpace extends StoreSpace {
  /** Copies of the file after every sync. */
  readonly images: Buffer[] = [];
  syncs = 0;
  record = false;
  failRead: ((slot: number) => boolean) | undefined;
  failSync = false;
  readonly path: string;

  constructor(path: string) {
    super(CHUNK, RESERVED);
    this.path = path;
    this.add({ path, start: 0, length: RESERVED + SLOTS * CHUNK });
  }

  override async sync(): Promise<void> {
    if (this.failSync) throw new NbdsnapError('EIO', 'injected sync failure');
    await super.sync();
    this.syncs += 1;
    if (this.record) this.images.push(readFileSync(this.path));
  }

  override async readSlot(slot: number, length: number, offsetInSlot = 0): Promise<Buffer> {
    if (this.failRead?.(slot) === true) throw Object.assign(new Error('injected read error'), { code: 'EIO' });
    return super.readSlot(slot, length, offsetInSlot);
  }
}

let files = 0;
/** A new store file whose every byte is junk (what freed data slots hold). */
function junkFile(): string {
  const path = join(dir.path, `j${files++}.img`);
  const buf = Buffer.alloc(RESERVED + SLOTS * CHUNK);
  let x = 0x12345678 + files;
  for (let i = 0; i < buf.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    buf[i] = x >>> 24;
  }
  writeFileSync(path, buf);
  return path;
}

/** Records of batch `b`: varied types and sizes (no EXCEPTION/PRIVATE: their payload is changing). */
function batchRecords(b: number, count = 1 + ((b * 7) % 13)): JournalRecord[] {
  return Array.from({ length: count }, (_, i): JournalRecord => {
    const k = b * 100 + i;
    switch (k % 6) {
      case 0:
        return { type: 'CBT', device: 1 + (k % 3), era: b, block: k * 5, count: 1 + (k % 9) };
      case 1:
        return { type: 'INVALID', snapshot: k, reason: `reason ${'x'.repeat(k % 40)}` };
      case 2:
        return {
          type: 'SNAPSHOT',
          created: 1_700_000_000_000 + k,
          name: `snap-${k}`,
          members: Array.from({ length: 1 + (k % 3) }, (_, m) => ({
            snapshot: k + m,
            device: m + 1,
            seq: b,
            writable: m === 1,
          })),
        };
      case 3:
        return { type: 'MERGED', snapshot: b, chunk: k * 11, count: 1 + (k % 4) };
      case 4:
        return { type: 'DEVICE', device: k, size: k * 65536, name: `dev-${'d'.repeat(k % 17)}` };
      default:
        return { type: 'DELETE', snapshot: k };
    }
  });
}

interface Built {
  path: string;
  first: number;
  batches: JournalRecord[][];
  images: Buffer[];
  /** For each batch, the index in `images` of the copy taken after its (final) sync. */
  marks: number[];
}

/** Write `sizes.length` batches (sizes: record counts); close gracefully if `clean`. */
async function build(sizes: number[], clean: boolean): Promise<Built> {
  const path = junkFile();
  const space = new TestSpace(path);
  space.record = true;
  const journal = await Journal.create(space);
  const batches: JournalRecord[][] = [];
  const marks: number[] = [];
  for (const [b, n] of sizes.entries()) {
    const records = batchRecords(b, n);
    await journal.append(records);
    batches.push(records);
    marks.push(space.images.length - 1);
  }
  if (clean) await journal.close();
  space.close();
  return { path, first: journal.slots[0] as number, batches, images: space.images, marks };
}

async function open(path: string, first: number, opts: JournalOpenOptions = {}) {
  const space = new TestSpace(path);
  try {
    return await Journal.open(space, first, opts);
  } finally {
    space.close();
  }
}

type Outcome = 'corrupt' | 'exact' | 'fewer' | 'other';
async function outcome(path: string, first: number, want: JournalRecord[]): Promise<Outcome> {
  try {
    const { records } = await open(path, first, { readOnly: true });
    if (isDeepStrictEqual(records, want)) return 'exact';
    return records.length < want.length ? 'fewer' : 'other';
  } catch (err) {
    if (err instanceof NbdsnapError && err.code === 'CORRUPT') return 'corrupt';
    throw err;
  }
}

/** 512-byte sectors in which two copies of the file differ. */
function changedSectors(a: Buffer, b: Buffer): number[] {
  const out: number[] = [];
  for (let s = 0; s * SECTOR < a.length; s++) {
    if (!a.subarray(s * SECTOR, (s + 1) * SECTOR).equals(b.subarray(s * SECTOR, (s + 1) * SECTOR))) out.push(s);
  }
  return out;
}

/** `before` with the sectors in `take` as in `after`: a sync cut short after those reached the disk. */
function tear(before: Buffer, after: Buffer, take: number[]): Buffer {
  const out = Buffer.from(before);
  for (const s of take) after.copy(out, s * SECTOR, s * SECTOR, (s + 1) * SECTOR);
  return out;
}

/** Byte positions that differ between two copies of the file. */
function changedBytes(a: Buffer, b: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) out.push(i);
  return out;
}

function flipByte(path: string, pos: number, mask: number): void {
  const fd = openSync(path, 'r+');
  try {
    const one = Buffer.alloc(1);
    readSync(fd, one, 0, 1, pos);
    one[0] = (one[0] as number) ^ mask;
    writeSync(fd, one, 0, 1, pos);
  } finally {
    closeSync(fd);
  }
}

const SIZES = Array.from({ length: 40 }, (_, b) => 1 + ((b * 7) % 13));

describe('journal replay', () => {
  it('returns exactly what was committed, after a clean stop and after a crash, and resumes', async () => {
    for (const clean of [true, false]) {
      const built = await build(SIZES, clean);
      const { records, report } = await open(built.path, built.first);
      expect(records).toEqual(built.batches.flat());
      expect(report.cleanStop).toBe(clean);
      expect(report.reason).toBe(clean ? 'clean' : 'end');
      expect(report.batches).toBe(SIZES.length + (clean ? 1 : 0));
      expect(report.blocks).toBeGreaterThan(4);
      // Resume: more batches after the reopen, then a clean stop.
      const space = new TestSpace(built.path);
      const again = await Journal.open(space, built.first);
      const more = [batchRecords(100, 5), batchRecords(101, 12)];
      await Promise.all(more.map((r) => again.journal.append(r)));
      await again.journal.close();
      await expect(again.journal.append(batchRecords(102, 1))).rejects.toMatchObject({ code: 'ESHUTDOWN' });
      space.close();
      const third = await open(built.path, built.first);
      expect(third.records).toEqual([...built.batches.flat(), ...more.flat()]);
      expect(third.report.cleanStop).toBe(true);
    }
  });

  it('groups appends made while a batch is committed, in order, one sync per batch', async () => {
    const space = new TestSpace(junkFile());
    const journal = await Journal.create(space);
    const first = journal.slots[0] as number;
    const syncs0 = space.syncs;
    await journal.append(batchRecords(0, 3));
    expect(space.syncs - syncs0).toBe(1);
    const waves = Array.from({ length: 30 }, (_, i) => batchRecords(i + 1, 2));
    await Promise.all(waves.map((r) => journal.append(r)));
    space.close();
    const { records, report } = await open(space.path, first);
    expect(records).toEqual([...batchRecords(0, 3), ...waves.flat()]);
    expect(report.batches).toBeLessThan(31); // grouped
  });

  it('drops a last batch torn at any sector boundary or in any sector subset, and never calls it damage', async () => {
    // Last batch within one block, and last batch crossing into a new block (a sync in between).
    const cases: { built: Built; crossing: boolean }[] = [];
    for (let extra = 1; cases.length < 2 && extra < 60; extra += 3) {
      const built = await build([...SIZES.slice(0, 20), extra, 30], false);
      const n = built.marks.length;
      const crossing = (built.marks[n - 1] as number) - (built.marks[n - 2] as number) === 2;
      if (!cases.some((c) => c.crossing === crossing)) cases.push({ built, crossing });
    }
    expect(cases.map((c) => c.crossing).sort()).toEqual([false, true]);
    let tried = 0;
    for (const { built } of cases) {
      const n = built.marks.length;
      const full = built.batches.flat();
      const previous = built.batches.slice(0, -1).flat();
      // Each sync interval of the last batch: the state after the sync before it, plus any subset
      // of the sectors written in it.
      for (let i = (built.marks[n - 2] as number) + 1; i <= (built.marks[n - 1] as number); i++) {
        const before = built.images[i - 1] as Buffer;
        const after = built.images[i] as Buffer;
        const final = i === built.marks[n - 1];
        const sectors = changedSectors(before, after);
        expect(sectors.length).toBeGreaterThan(0);
        const subsets: number[][] = [];
        for (let k = 0; k <= sectors.length; k++) subsets.push(sectors.slice(0, k)); // every prefix
        for (let k = 0; k < sectors.length; k++) subsets.push(sectors.filter((_, j) => j !== k)); // one missing
        for (let k = 0; k < sectors.length; k++) subsets.push([sectors[k] as number]); // one written
        let x = 7;
        for (let k = 0; k < 20; k++) {
          subsets.push(sectors.filter(() => ((x = (x * 1103515245 + 12345) >>> 0) & 0x10000) !== 0));
        }
        for (const take of subsets) {
          tried += 1;
          writeFileSync(built.path, tear(before, after, take));
          const whole = final && take.length === sectors.length;
          const { records, report } = await open(built.path, built.first);
          expect(records).toEqual(whole ? full : previous);
          if (!whole) expect(report.cleanStop).toBe(false);
          // Zeroed: the next start finds the same, with nothing torn.
          const again = await open(built.path, built.first);
          expect(again.records).toEqual(records);
          expect(again.report.reason).toBe('end');
        }
      }
    }
    expect(tried).toBeGreaterThan(100);
  });

  it('refuses one changed byte anywhere in a completed batch, the last one too, after a clean stop or a crash', async () => {
    const counts: Record<string, number> = {};
    for (const clean of [true, false]) {
      const built = await build([...SIZES.slice(0, 24), 3, 40, 2], clean);
      const want = built.batches.flat();
      const last = built.images.length - 1;
      const n = built.marks.length;
      // Every byte written by the last two batches (and the CLEAN batch), a sample elsewhere.
      const tailFrom = built.marks[n - 3] as number;
      const every = changedBytes(built.images[tailFrom] as Buffer, built.images[last] as Buffer);
      const earlier = changedBytes(built.images[0] as Buffer, built.images[tailFrom] as Buffer);
      const sample = earlier.filter((_, i) => i % 23 === 0);
      expect(every.length).toBeGreaterThan(1000);
      const image = built.images[last] as Buffer;
      const inRecord = new Set<number>();
      for (const r of recordsIn(image, every)) for (let p = r.pos; p < r.pos + r.size; p++) inRecord.add(p);
      expect(inRecord.size).toBeGreaterThan(1000);
      for (const [positions, mask] of [
        [every, 0xff],
        [every.filter((_, i) => i % 3 === 0), 0x01],
        [sample, 0xff],
        [sample, 0x80],
      ] as const) {
        for (const pos of positions) {
          flipByte(built.path, pos, mask);
          const got = await outcome(built.path, built.first, want);
          flipByte(built.path, pos, mask);
          counts[got] = (counts[got] ?? 0) + 1;
          if (got === 'fewer' || got === 'other') throw new Error(`byte ${pos} ^ ${mask}: ${got} records, silently`);
          if (inRecord.has(pos) && got !== 'corrupt') throw new Error(`byte ${pos} ^ ${mask} of a record: ${got}`);
        }
      }
      // The bytes of the last COMMIT record itself, each of them, each way.
      const commits = recordsIn(image, changedBytes(built.images[built.marks[n - 2] as number] as Buffer, image));
      const commit = commits.filter((r) => r.type === 'COMMIT').at(clean ? -2 : -1) as { pos: number };
      for (let pos = commit.pos; pos < commit.pos + 36; pos++) {
        for (const mask of [0x01, 0x80, 0xff]) {
          flipByte(built.path, pos, mask);
          expect(await outcome(built.path, built.first, want)).toBe('corrupt');
          flipByte(built.path, pos, mask);
        }
      }
      expect(await outcome(built.path, built.first, want)).toBe('exact');
    }
    expect(counts.corrupt).toBeGreaterThan(4000);
  });

  it('refuses a sector of a completed batch that reads as zeros (a lost write), with batches after it', async () => {
    const built = await build(SIZES, false);
    const want = built.batches.flat();
    const n = built.marks.length;
    const final = built.images.at(-1) as Buffer;
    // Sectors written by the batches before the last two, in none of the last two's sectors (a lost
    // write of the sectors that end the journal is what a torn tail looks like).
    const end = built.images[built.marks[n - 3] as number] as Buffer;
    const late = new Set(changedSectors(end, final));
    const sectors = changedSectors(built.images[0] as Buffer, end).filter((s) => !late.has(s));
    const original = readFileSync(built.path);
    let refused = 0;
    for (const s of sectors) {
      const image = Buffer.from(final);
      if (image.subarray(s * SECTOR, (s + 1) * SECTOR).every((x) => x === 0)) continue;
      image.fill(0, s * SECTOR, (s + 1) * SECTOR);
      writeFileSync(built.path, image);
      const got = await outcome(built.path, built.first, want);
      expect(got).toBe('corrupt');
      refused += 1;
    }
    writeFileSync(built.path, original);
    expect(refused).toBeGreaterThan(10);
  });

  it('names the block and slot of a read error (EIO, short read) instead of ending the journal there', async () => {
    const built = await build(SIZES, true);
    const { report } = await open(built.path, built.first);
    const slot = report.slots[3] as number;
    const space = new TestSpace(built.path);
    space.failRead = (s) => s === slot;
    await expect(Journal.open(space, built.first)).rejects.toMatchObject({
      code: 'EIO',
      message: expect.stringContaining(`journal block 3 (store slot ${slot})`),
    });
    // Read-only too, and for the zeroed block after the end.
    space.clearAllocations();
    space.failRead = (s) => s === report.slots.at(-1);
    await expect(Journal.open(space, built.first, { readOnly: true })).rejects.toMatchObject({ code: 'EIO' });
    space.close();
    // A store file cut short in the middle of block 3: not "zeros, the end of the journal".
    const image = readFileSync(built.path);
    let at = -1;
    for (let p = 0; p < image.length && at < 0; p += SECTOR) {
      if (image.readUInt32LE(p) === 0x424a534e && image.readUInt32LE(p + 4) === 3) at = p;
    }
    expect(at).toBeGreaterThan(0);
    const cut = new TestSpace(built.path);
    const fd = openSync(built.path, 'r+');
    ftruncateSync(fd, at + CHUNK / 2);
    closeSync(fd);
    await expect(Journal.open(cut, built.first)).rejects.toMatchObject({
      code: 'EIO',
      message: expect.stringContaining('journal block 3'),
    });
    cut.close();
  });

  it('checks the chain: a batch spliced in from another journal is damage', async () => {
    const a = await build([3, 4, 5], false);
    // Another journal, same layout, other contents in batches 1 and 2 (same sizes).
    const other = (r: JournalRecord[]) =>
      r.map((x) => (x.type === 'DELETE' || x.type === 'INVALID' ? { ...x, snapshot: x.snapshot + 1 } : x));
    const space = new TestSpace(junkFile());
    space.record = true;
    const j = await Journal.create(space);
    await j.append(batchRecords(0, 3));
    await j.append(other(batchRecords(1, 4)));
    await j.append(other(batchRecords(2, 5)));
    space.close();
    expect(j.slots[0]).toBe(a.first);
    expect(space.images).toHaveLength(4);
    // Its batch 2 into a's file: every record decodes, seqs and counts fit; only the chain differs.
    const to = space.images[3] as Buffer;
    const changed = changedBytes(space.images[2] as Buffer, to);
    const mine = readFileSync(a.path);
    to.copy(mine, changed[0], changed[0], (changed.at(-1) as number) + 1);
    writeFileSync(a.path, mine);
    await expect(open(a.path, a.first)).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringContaining('chained checksum'),
    });
  });

  it('asks the verifier about the last batch after a crash only, and drops exactly that batch', async () => {
    const built = await build(SIZES, false);
    const seen: JournalRecord[][] = [];
    const fails = async (records: JournalRecord[]) => {
      seen.push(records);
      return false;
    };
    const ro = await open(built.path, built.first, { verifyLastBatch: fails, readOnly: true });
    expect(seen).toEqual([built.batches.at(-1)]);
    expect(ro.records).toEqual(built.batches.slice(0, -1).flat());
    expect(ro.report.reason).toBe('torn');
    // Read-only wrote nothing: a verifier that agrees gets everything.
    const ok = await open(built.path, built.first, { verifyLastBatch: async () => true });
    expect(ok.records).toEqual(built.batches.flat());
    expect(ok.report.reason).toBe('end');
    const dropped = await open(built.path, built.first, { verifyLastBatch: fails });
    expect(dropped.records).toEqual(built.batches.slice(0, -1).flat());
    // The dropped batch was zeroed: gone for good, and the batch before is not asked about again
    // unless it is the last one.
    const after = await open(built.path, built.first);
    expect(after.records).toEqual(built.batches.slice(0, -1).flat());
    expect(after.report.reason).toBe('end');

    // After a clean stop the verifier is not consulted.
    const clean = await build(SIZES, true);
    seen.length = 0;
    const c = await open(clean.path, clean.first, { verifyLastBatch: fails });
    expect(seen).toEqual([]);
    expect(c.records).toEqual(clean.batches.flat());
    expect(c.report.cleanStop).toBe(true);

    // Nor when a torn batch follows: the last whole batch's sync had returned.
    const torn = await build([...SIZES.slice(0, 10), 30], false);
    const n = torn.marks.length;
    const before = torn.images[torn.marks[n - 2] as number] as Buffer;
    const after2 = torn.images[torn.marks[n - 1] as number] as Buffer;
    writeFileSync(torn.path, tear(before, after2, changedSectors(before, after2).slice(0, 1)));
    seen.length = 0;
    const t = await open(torn.path, torn.first, { verifyLastBatch: fails });
    expect(seen).toEqual([]);
    expect(t.records).toEqual(torn.batches.slice(0, -1).flat());
    expect(t.report.reason).toBe('torn');
  });

  it('stops for good when a batch cannot be made durable, and writes no CLEAN after it', async () => {
    const space = new TestSpace(junkFile());
    const journal = await Journal.create(space);
    const first = journal.slots[0] as number;
    await journal.append(batchRecords(0, 2));
    space.failSync = true;
    await expect(journal.append(batchRecords(1, 2))).rejects.toMatchObject({ code: 'EIO' });
    space.failSync = false;
    await expect(journal.append(batchRecords(2, 2))).rejects.toMatchObject({ code: 'EIO' });
    await journal.close();
    space.close();
    const { report } = await open(space.path, first);
    expect(report.cleanStop).toBe(false);
  });
});

/** Records found in `image` at 8-aligned positions among `positions` (the bytes a batch wrote). */
function recordsIn(image: Buffer, positions: number[]): { pos: number; size: number; type: string }[] {
  const out: { pos: number; size: number; type: string }[] = [];
  const seen = new Set<number>();
  for (const p of positions) {
    const at = p - (p % 8);
    if (seen.has(at) || at + 20 > image.length) continue;
    seen.add(at);
    if (image.readUInt32LE(at) !== RECORD_MAGIC) continue;
    // Decode within the slot: a record never crosses one, and the slot is at most this big.
    const r = decodeRecord(image.subarray(at, at + CHUNK), 0);
    if (!('bad' in r)) out.push({ pos: at, size: r.size, type: r.record.type });
  }
  return out;
}
