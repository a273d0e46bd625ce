/**
 * Unit tests, no server: the copy cache (copy-cache.ts) and the snapshot read path over store
 * copies (copy-read.ts), on a real store file. Checked against a model of what each slot holds:
 * - block checksums combine into the chunk's (checksum.ts);
 * - reads of random pieces, over copies in neighbouring slots (one read) and scattered ones,
 *   whole and partial, are byte-exact, and cached data is served exactly;
 * - a byte flipped on disk is never served: while the chunk's data is kept the kept bytes are
 *   served; once evicted, a read of the damaged block is handed back (the slow path's EIO);
 * - a slot freed (`forget`) and written again is never served from what was kept of it, even
 *   when the new copy has the same checksum (forged); a read in flight across the free keeps
 *   nothing;
 * - the cache stays within its bound.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CopyCache } from '../../../src/snapshot/copy-cache.ts';
import { type CopyPiece, CopyReader, copyChecksum } from '../../../src/snapshot/copy-read.ts';
import { copyOf } from '../../../src/snapshot/exception-table.ts';
import { blockChecksums, checksum, combine } from '../../../src/store/checksum.ts';
import { DiffStore } from '../../../src/store/store.ts';
import { rng } from '../../helpers/random.ts';
import { tempDir } from '../../helpers/server.ts';
import { makeSparse } from '../../helpers/snapshots.ts';

const CS = 64 * 1024;
const dir = tempDir('nbdsnap-copy-cache-');
afterAll(() => dir.cleanup());

const TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const BY_TOP = new Map(TABLE.map((t, j) => [t >>> 24, j]));

/** `data` with its last 4 bytes changed so that its checksum is `target` (CRC-32 is affine). */
function forge(data: Buffer, target: number): Buffer {
  const out = Buffer.from(data);
  let reg = ~target >>> 0;
  const ks: number[] = [];
  for (let i = 3; i >= 0; i--) {
    const k = BY_TOP.get(reg >>> 24) as number;
    ks[i] = k;
    reg = ((reg ^ (TABLE[k] as number)) << 8) >>> 0;
  }
  let r = ~checksum(out.subarray(0, out.length - 4)) >>> 0;
  for (let i = 0; i < 4; i++) {
    const k = ks[i] as number;
    out[out.length - 4 + i] = (r ^ k) & 0xff;
    r = ((r >>> 8) ^ (TABLE[k] as number)) >>> 0;
  }
  return out;
}

async function openStore(name: string, slots: number): Promise<{ store: DiffStore; path: string }> {
  const path = makeSparse(join(dir.path, name), 1024 * 1024 + (slots + 8) * CS);
  const { store } = await DiffStore.open([{ path, start: 0, length: 1024 * 1024 + (slots + 8) * CS }], {
    chunkSize: CS,
    transient: true,
  });
  return { store, path };
}

/** Write `data` to a fresh slot; returns the slot and its copy. */
async function put(store: DiffStore, data: Buffer, slot = store.allocate() as number) {
  await store.writeSlot(slot, data);
  return { slot, copy: copyOf(slot, checksum(data)), data };
}

/** Flip one byte on disk, behind the store's back. */
function flip(store: DiffStore, path: string, slot: number, inSlot: number): void {
  const at = store.space.locate(slot).offset + inSlot;
  const fd = openSync(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, at);
    b[0] = (b[0] as number) ^ 0xff;
    writeSync(fd, b, 0, 1, at);
  } finally {
    closeSync(fd);
  }
}

async function readPieces(reader: CopyReader, pieces: CopyPiece[], length: number) {
  const out = Buffer.alloc(length, 0xee);
  const failed = await reader.read(pieces, out);
  return { out, failed };
}

describe('checksum: block checksums', () => {
  it('combine into the whole checksum, for whole and short chunks', () => {
    const r = rng(1);
    for (const n of [1, 4095, 4096, 4097, 65536, 65536 - 100, 3 * 4096 + 17]) {
      const d = randomBytes(n);
      const sums = new Uint32Array(Math.ceil(n / 4096));
      expect(blockChecksums(d, sums)).toBe(checksum(d));
      for (let k = 0; k < sums.length; k++) expect(sums[k]).toBe(checksum(d.subarray(k * 4096, (k + 1) * 4096)));
      const cut = Math.floor(r() * n);
      expect(combine(checksum(d.subarray(0, cut)), checksum(d.subarray(cut)), n - cut)).toBe(checksum(d));
    }
  });
});

describe('CopyReader', () => {
  it('reads random pieces byte-exact, neighbouring slots with one read, cached data exactly', async () => {
    const { store } = await openStore('exact.img', 64);
    const reader = new CopyReader(store, 2 * 1024 * 1024);
    try {
      // 48 chunks: the first 24 in neighbouring slots in chunk order, the rest scattered.
      const chunks: { slot: number; copy: ReturnType<typeof copyOf>; data: Buffer }[] = [];
      const slots = Array.from({ length: 48 }, () => store.allocate() as number);
      const scattered = slots.slice(24).sort(() => (rng(2)() < 0.5 ? -1 : 1));
      const order = [...slots.slice(0, 24), ...scattered.reverse()];
      for (let c = 0; c < 48; c++) chunks.push(await put(store, randomBytes(CS), order[c] as number));
      const model = Buffer.concat(chunks.map((c) => c.data));
      const r = rng(3);
      for (let round = 0; round < 300; round++) {
        const offset = Math.floor(r() * 48 * CS);
        const length = Math.max(1, Math.min(48 * CS - offset, Math.floor(r() * (r() < 0.5 ? 8192 : 6 * CS))));
        const pieces: CopyPiece[] = [];
        for (let at = 0; at < length; ) {
          const pos = offset + at;
          const chunk = Math.floor(pos / CS);
          const inChunk = pos - chunk * CS;
          const n = Math.min(CS - inChunk, length - at);
          pieces.push({
            chunk,
            copy: (chunks[chunk] as (typeof chunks)[number]).copy,
            chunkLength: CS,
            inChunk,
            length: n,
            at,
          });
          at += n;
        }
        const { out, failed } = await readPieces(reader, pieces, length);
        expect(failed).toEqual([]);
        expect(out.equals(model.subarray(offset, offset + length))).toBe(true);
      }
      expect(reader.stats.whole).toBeGreaterThan(0);
      expect(reader.stats.blocks).toBeGreaterThan(0);
      expect(reader.stats.data).toBeGreaterThan(0);
      expect(reader.stats.joined).toBeGreaterThan(0);
    } finally {
      reader.close();
      await store.close();
    }
  });

  it('never serves a byte flipped on disk: kept data is exact, after eviction the damaged block is refused', async () => {
    const { store, path } = await openStore('flip.img', 64);
    // Room for 3 chunks of data.
    const reader = new CopyReader(store, 4 * CS);
    try {
      const a = await put(store, randomBytes(CS));
      const piece = (inChunk: number, length: number): CopyPiece => ({
        chunk: 0,
        copy: a.copy,
        chunkLength: CS,
        inChunk,
        length,
        at: 0,
      });
      // Read part of it: kept whole (data) and by blocks.
      expect((await readPieces(reader, [piece(8192, 4096)], 4096)).failed).toEqual([]);
      flip(store, path, a.slot, 8192 + 100);
      // The kept bytes are the verified ones.
      const kept = await readPieces(reader, [piece(8192, 4096)], 4096);
      expect(kept.failed).toEqual([]);
      expect(kept.out.equals(a.data.subarray(8192, 12288))).toBe(true);
      // Evict its data: other chunks read in part.
      for (let i = 0; i < 4; i++) {
        const o = await put(store, randomBytes(CS));
        await readPieces(reader, [{ ...piece(0, 512), copy: o.copy }], 512);
      }
      expect(reader.cache.getData(a.slot, a.copy.crc)).toBeUndefined();
      expect(reader.cache.getSums(a.slot, a.copy.crc)).toBeDefined();
      // The damaged block, alone or within a larger read, and the whole chunk: handed back.
      for (const [inChunk, length] of [
        [8192, 4096],
        [8192 + 100, 1],
        [4096, 3 * 4096],
        [0, CS],
      ] as const) {
        const got = await readPieces(reader, [piece(inChunk, length)], length);
        expect(got.failed.map((p) => p.inChunk)).toEqual([inChunk]);
      }
      // Another block of the same chunk still checks out against its own checksum: exact bytes.
      const other = await readPieces(reader, [piece(32768, 4096)], 4096);
      expect(other.failed).toEqual([]);
      expect(other.out.equals(a.data.subarray(32768, 36864))).toBe(true);
    } finally {
      reader.close();
      await store.close();
    }
  });

  it('a slot freed and written again never serves what was kept of it, even with the same checksum', async () => {
    const { store } = await openStore('reuse.img', 16);
    const reader = new CopyReader(store, 2 * 1024 * 1024);
    try {
      const a = await put(store, randomBytes(CS));
      const piece = (copy: CopyPiece['copy'], inChunk: number, length: number): CopyPiece => ({
        chunk: 0,
        copy,
        chunkLength: CS,
        inChunk,
        length,
        at: 0,
      });
      expect((await readPieces(reader, [piece(a.copy, 0, 4096)], 4096)).failed).toEqual([]);
      expect(reader.cache.getData(a.slot, a.copy.crc)).toBeDefined();
      // Freed (merge, delete, a private chunk written again: the recorder forgets it), reused.
      reader.cache.forget(a.slot);
      store.release(a.slot);
      const forged = forge(randomBytes(CS), a.copy.crc >>> 0);
      expect(checksum(forged)).toBe(a.copy.crc >>> 0);
      const b = await put(store, forged, a.slot);
      expect(b.copy).toEqual(a.copy); // the same slot and checksum: only `forget` tells them apart
      for (const [inChunk, length] of [
        [0, 4096],
        [100, 5000],
        [0, CS],
      ] as const) {
        const got = await readPieces(reader, [piece(b.copy, inChunk, length)], length);
        expect(got.failed).toEqual([]);
        expect(got.out.equals(forged.subarray(inChunk, inChunk + length))).toBe(true);
      }
      // A read in flight across the free keeps nothing.
      const c = await put(store, randomBytes(CS));
      const token = reader.cache.begin(c.slot);
      reader.cache.forget(c.slot);
      reader.cache.putData(c.slot, c.copy.crc, c.data, token);
      reader.cache.putSums(c.slot, c.copy.crc, new Uint32Array(16), token);
      reader.cache.end(c.slot, token);
      expect(reader.cache.getData(c.slot, c.copy.crc)).toBeUndefined();
      expect(reader.cache.getSums(c.slot, c.copy.crc)).toBeUndefined();
      // The copy-on-write path's block checksums: kept once recorded, not after a free.
      const d = await put(store, randomBytes(CS));
      const sum = copyChecksumFor(reader, store, d);
      expect(sum.crc).toBe(d.copy.crc >>> 0);
      reader.cache.forget(d.slot);
      sum.keep();
      expect(reader.cache.getSums(d.slot, d.copy.crc)).toBeUndefined();
    } finally {
      reader.close();
      await store.close();
    }
  });
});

/** `copyChecksum` uses the store's registered reader; this test's reader stands in for it. */
function copyChecksumFor(reader: CopyReader, store: DiffStore, d: { slot: number; data: Buffer }) {
  const sums = new Uint32Array(reader.cache.blocks);
  const crc = blockChecksums(d.data, sums);
  const token = reader.cache.begin(d.slot);
  expect(copyChecksum(store, d.slot, d.data).crc).toBe(crc); // no reader registered: the plain checksum
  return {
    crc,
    keep: () => {
      reader.cache.putSums(d.slot, crc, sums, token);
      reader.cache.end(d.slot, token);
    },
  };
}

describe('CopyCache', () => {
  it('stays within its bound', () => {
    for (const bytes of [0, 100_000, 1024 * 1024, 32 * 1024 * 1024]) {
      const cache = new CopyCache(CS, bytes);
      const r = rng(bytes);
      const data = randomBytes(CS);
      const sums = new Uint32Array(16);
      for (let i = 0; i < 3000; i++) {
        const slot = Math.floor(r() * 5000);
        const t = cache.begin(slot);
        cache.putData(slot, i, data, t);
        cache.putSums(slot, i, sums, t);
        cache.end(slot, t);
        if (r() < 0.1) cache.forget(Math.floor(r() * 5000));
        expect(cache.bytes).toBeLessThanOrEqual(Math.max(bytes, 0) + CS);
      }
      const [d, s] = cache.counts;
      expect(d * CS).toBeLessThanOrEqual(cache.dataLimit);
      expect(s * (17 * 4)).toBeLessThanOrEqual(cache.sumLimit);
      expect(cache.dataLimit + cache.sumLimit).toBeLessThanOrEqual(bytes);
    }
  });

  it('misses for another copy in the same slot', () => {
    const cache = new CopyCache(CS, 1024 * 1024);
    const t = cache.begin(5);
    cache.putData(5, 111, randomBytes(CS), t);
    cache.putSums(5, 111, new Uint32Array(16), t);
    cache.end(5, t);
    expect(cache.getData(5, 111)).toBeDefined();
    expect(cache.getData(5, 112)).toBeUndefined();
    expect(cache.getSums(5, 112)).toBeUndefined();
  });
});
