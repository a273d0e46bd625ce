/**
 * A rig for journal tests without a server: a StoreSpace over a temporary file whose free slots
 * hold junk (as freed data slots do), batches of varied records, copies of the file taken at every
 * sync, and helpers to tear a sync (sectors written in any subset) or change one byte. Positions in
 * the file come from comparing those copies, so nothing here depends on where the store puts its
 * slots; `TestSpace` is the one place that builds a space.
 */
import { closeSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { afterAll } from 'vitest';
import { NbdsnapError } from '../../src/errors.ts';
import { Journal, type JournalOpenOptions } from '../../src/store/journal.ts';
import { decodeRecord, type JournalRecord, RECORD_MAGIC } from '../../src/store/records.ts';
import { StoreSpace } from '../../src/store/space.ts';
import { tempDir } from '../helpers/server.ts';

const dir = tempDir('nbdsnap-journal-');
afterAll(() => dir.cleanup());

export const CHUNK = 4096;
export const SLOTS = 64;
/** Room before the slots (the store's label or superblock area; the space decides where slots start). */
export const RESERVED = 128 * 1024;
export const SECTOR = 512;

/** A store space over `path`: the one place that knows how to build one. */
export class TestSpace extends StoreSpace {
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
export function junkFile(): string {
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
export function batchRecords(b: number, count = 1 + ((b * 7) % 13)): JournalRecord[] {
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

export interface Built {
  path: string;
  first: number;
  batches: JournalRecord[][];
  images: Buffer[];
  /** For each batch, the index in `images` of the copy taken after its (final) sync. */
  marks: number[];
}

/** Write `sizes.length` batches (sizes: record counts); close gracefully if `clean`. */
export async function build(sizes: number[], clean: boolean): Promise<Built> {
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

export async function open(path: string, first: number, opts: JournalOpenOptions = {}) {
  const space = new TestSpace(path);
  try {
    return await Journal.open(space, first, opts);
  } finally {
    space.close();
  }
}

export type Outcome = 'corrupt' | 'exact' | 'fewer' | 'other';
export async function outcome(path: string, first: number, want: JournalRecord[]): Promise<Outcome> {
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
export function changedSectors(a: Buffer, b: Buffer): number[] {
  const out: number[] = [];
  for (let s = 0; s * SECTOR < a.length; s++) {
    if (!a.subarray(s * SECTOR, (s + 1) * SECTOR).equals(b.subarray(s * SECTOR, (s + 1) * SECTOR))) out.push(s);
  }
  return out;
}

/** `before` with the sectors in `take` as in `after`: a sync cut short after those reached the disk. */
export function tear(before: Buffer, after: Buffer, take: number[]): Buffer {
  const out = Buffer.from(before);
  for (const s of take) after.copy(out, s * SECTOR, s * SECTOR, (s + 1) * SECTOR);
  return out;
}

/** Byte positions that differ between two copies of the file. */
export function changedBytes(a: Buffer, b: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) out.push(i);
  return out;
}

export function flipByte(path: string, pos: number, mask: number): void {
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

export const SIZES = Array.from({ length: 40 }, (_, b) => 1 + ((b * 7) % 13));

/** Records found in `image` at 8-aligned positions among `positions` (the bytes a batch wrote). */
export function recordsIn(image: Buffer, positions: number[]): { pos: number; size: number; type: string }[] {
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
