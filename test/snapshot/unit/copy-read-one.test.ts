/**
 * Unit tests, no server: the one-piece snapshot read (`CopyReader.readOne`, copy-read.ts), the
 * block checksums kept from whole chunks verified in a batch or read whole (copy-batch.ts,
 * read-crc.c: what rebuilds them after a restart), and slot locations over several store ranges
 * (copy-locate.ts), on real store files. Checked against what each slot holds:
 * - a byte flipped on disk after its block checksums were kept is refused by a small read of its
 *   block (the caller's slow path then answers EIO), alone or within a few blocks; the other
 *   blocks of the chunk read exact;
 * - a chunk damaged before its first whole read is refused there, and keeps no block checksums;
 * - reads of random pieces over copies in two store ranges (two files) are byte-exact.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as pool from '../../../src/block/buffer-pool.ts';
import { native } from '../../../src/block/native.ts';
import { type CopyPiece, CopyReader } from '../../../src/snapshot/copy-read.ts';
import { copyOf } from '../../../src/snapshot/exception-table.ts';
import { checksum } from '../../../src/store/checksum.ts';
import { DiffStore } from '../../../src/store/store.ts';
import { tempDir } from '../../helpers/server.ts';
import { makeSparse } from '../../helpers/snapshots.ts';

const CS = 64 * 1024;
const KiB = 1024;
const dir = tempDir('nbdsnap-copy-read-one-');
afterAll(() => dir.cleanup());

async function openStore(names: string[], slots: number): Promise<DiffStore> {
  const size = 1024 * 1024 + (slots + 8) * CS;
  const ranges = names.map((n) => ({ path: makeSparse(join(dir.path, n), size), start: 0, length: size }));
  const { store } = await DiffStore.open(ranges, { chunkSize: CS, transient: true });
  return store;
}

async function put(store: DiffStore, data: Buffer, slot = store.allocate() as number) {
  await store.writeSlot(slot, data);
  return { slot, copy: copyOf(slot, checksum(data)), data };
}

function flip(store: DiffStore, slot: number, inSlot: number): void {
  const at = store.space.locate(slot);
  const fd = openSync(at.path, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, at.offset + inSlot);
    b[0] = (b[0] as number) ^ 0xff;
    writeSync(fd, b, 0, 1, at.offset + inSlot);
  } finally {
    closeSync(fd);
  }
}

/** `readOne` of [inChunk, inChunk + length) of `copy`: the bytes, or undefined when refused. */
async function one(reader: CopyReader, copy: ReturnType<typeof copyOf>, inChunk: number, length: number) {
  const out = Buffer.alloc(length, 0xee);
  return (await reader.readOne(copy, inChunk, length, CS, out)) ? out : undefined;
}

describe('CopyReader.readOne', () => {
  it('refuses a block damaged after its block checksums were kept, and reads the others exact', async () => {
    const store = await openStore(['one.img'], 16);
    // Room for one chunk of data: the damaged chunk's data is evicted, its block checksums stay.
    const reader = new CopyReader(store, 2 * CS);
    try {
      const a = await put(store, randomBytes(CS));
      const b = await put(store, randomBytes(CS));
      expect((await one(reader, a.copy, 8 * KiB, 4 * KiB))?.equals(a.data.subarray(8 * KiB, 12 * KiB))).toBe(true);
      expect(reader.cache.getSums(a.slot, a.copy.crc)).toBeDefined();
      expect((await one(reader, b.copy, 0, 512))?.equals(b.data.subarray(0, 512))).toBe(true);
      expect(reader.cache.getData(a.slot, a.copy.crc)).toBeUndefined();
      flip(store, a.slot, 20 * KiB + 7);
      const blocks = reader.stats.blocks;
      // Block 5 alone, blocks 4-6, and an unaligned piece of it: refused.
      expect(await one(reader, a.copy, 20 * KiB, 4 * KiB)).toBeUndefined();
      expect(await one(reader, a.copy, 16 * KiB, 12 * KiB)).toBeUndefined();
      expect(await one(reader, a.copy, 20 * KiB + 5, 100)).toBeUndefined();
      expect(reader.stats.blocks).toBe(blocks + 3); // by its kept block checksums, not the whole chunk
      // The other blocks of the chunk check out against their own checksums.
      for (const [at, n] of [
        [0, 4 * KiB],
        [24 * KiB, 8 * KiB],
        [CS - 4 * KiB, 4 * KiB],
        [30 * KiB + 1, 1000],
      ] as const) {
        expect((await one(reader, a.copy, at, n))?.equals(a.data.subarray(at, at + n))).toBe(true);
      }
    } finally {
      reader.close();
      await store.close();
    }
  });

  it('keeps block checksums from a whole chunk read and verified, which then refuse later damage', async () => {
    const store = await openStore(['whole.img'], 16);
    const reader = new CopyReader(store, 2 * CS);
    try {
      const a = await put(store, randomBytes(CS));
      // Damaged before its first read (as after a restart): refused whole, nothing kept.
      const bad = await put(store, randomBytes(CS));
      flip(store, bad.slot, 40 * KiB);
      expect(await one(reader, bad.copy, 0, CS)).toBeUndefined();
      expect(await one(reader, bad.copy, 0, 4 * KiB)).toBeUndefined();
      expect(reader.cache.getSums(bad.slot, bad.copy.crc)).toBeUndefined();
      // Read whole (straight into the reply): its block checksums are kept, not its data.
      expect((await one(reader, a.copy, 0, CS))?.equals(a.data)).toBe(true);
      expect(reader.cache.getSums(a.slot, a.copy.crc)).toBeDefined();
      expect(reader.cache.getData(a.slot, a.copy.crc)).toBeUndefined();
      flip(store, a.slot, 44 * KiB + 1);
      const blocks = reader.stats.blocks;
      expect(await one(reader, a.copy, 44 * KiB, 4 * KiB)).toBeUndefined();
      expect(reader.stats.blocks).toBe(blocks + 1);
      expect((await one(reader, a.copy, 48 * KiB, 4 * KiB))?.equals(a.data.subarray(48 * KiB, 52 * KiB))).toBe(true);
    } finally {
      reader.close();
      await store.close();
    }
  });

  it.skipIf(native?.readCrcBatch === undefined)(
    'keeps block checksums from whole chunks verified in a batch, which then refuse later damage',
    async () => {
      const store = await openStore(['batch.img'], 16);
      const reader = new CopyReader(store, 2 * CS);
      try {
        const chunks = [];
        for (let c = 0; c < 4; c++) chunks.push(await put(store, randomBytes(CS)));
        const bad = chunks[2] as (typeof chunks)[number];
        flip(store, bad.slot, 4 * KiB);
        const pieces: CopyPiece[] = chunks.map((c, k) => ({
          chunk: k,
          copy: c.copy,
          chunkLength: CS,
          inChunk: 0,
          length: CS,
          at: k * CS,
        }));
        const out = Buffer.alloc(4 * CS);
        const failed = await reader.read(pieces, out);
        expect(reader.stats.batched).toBe(4);
        // The chunk damaged before the read is refused and keeps nothing; the others are exact.
        expect(failed.map((p) => p.chunk)).toEqual([2]);
        expect(reader.cache.getSums(bad.slot, bad.copy.crc)).toBeUndefined();
        for (const k of [0, 1, 3]) {
          const c = chunks[k] as (typeof chunks)[number];
          expect(out.subarray(k * CS, (k + 1) * CS).equals(c.data)).toBe(true);
          expect(reader.cache.getSums(c.slot, c.copy.crc)).toBeDefined();
        }
        // Damage after the batch: a small read of the damaged block is refused by its kept checksum.
        const c3 = chunks[3] as (typeof chunks)[number];
        flip(store, c3.slot, 12 * KiB + 9);
        const blocks = reader.stats.blocks;
        expect(await one(reader, c3.copy, 12 * KiB, 4 * KiB)).toBeUndefined();
        expect(reader.stats.blocks).toBe(blocks + 1);
        expect((await one(reader, c3.copy, 0, 4 * KiB))?.equals(c3.data.subarray(0, 4 * KiB))).toBe(true);
      } finally {
        reader.close();
        await store.close();
      }
    },
  );

  it('reads copies in two store ranges byte-exact', async () => {
    const store = await openStore(['r0.img', 'r1.img'], 12);
    const reader = new CopyReader(store, 2 * CS);
    try {
      const chunks = [];
      // Every slot of both ranges, in an order that alternates between them.
      const slots: number[] = [];
      for (let s = store.allocate(); s !== undefined; s = store.allocate()) slots.push(s);
      expect(new Set(slots.map((s) => store.space.locate(s).path)).size).toBe(2);
      slots.sort((x, y) => (x % 3) - (y % 3) || y - x);
      for (const s of slots) chunks.push(await put(store, randomBytes(CS), s));
      let seed = 7;
      const rnd = () => {
        seed = (seed * 1103515245 + 12345) % 2147483648;
        return seed / 2147483648;
      };
      for (let round = 0; round < 400; round++) {
        const c = chunks[Math.floor(rnd() * chunks.length)] as (typeof chunks)[number];
        const at = rnd() < 0.5 ? Math.floor(rnd() * 16) * 4 * KiB : Math.floor(rnd() * (CS - 1));
        const n = Math.max(1, Math.min(CS - at, rnd() < 0.5 ? 4 * KiB : Math.floor(rnd() * 20 * KiB)));
        const got = await one(reader, c.copy, at, n);
        expect(got?.equals(c.data.subarray(at, at + n))).toBe(true);
      }
      expect(reader.stats.blocks).toBeGreaterThan(0);
    } finally {
      reader.close();
      await store.close();
    }
  });
});

describe('buffer pool', () => {
  it.skipIf(native?.pageOffset === undefined)('hands out large buffers on a page boundary', () => {
    const pageOffset = native?.pageOffset as (b: Uint8Array) => number;
    for (const n of [64 * KiB, 128 * KiB, 1024 * KiB, 1024 * KiB + 512]) {
      const b = pool.take(n);
      expect(b.length).toBe(n);
      expect(pageOffset(b)).toBe(0);
      pool.give(b);
    }
  });
});
