/**
 * The store's checksum (src/store/checksum.ts) is zlib's CRC-32, whichever implementation runs:
 * the native helper's (src/native/crc32.c) at each of its levels (tables, PCLMULQDQ, VPCLMULQDQ,
 * as far as this CPU has them) and the zlib fallback. Values on disk depend on it: every length
 * 0..1024, random large lengths, random seeds, unaligned views and a 4 MiB buffer must equal
 * zlib's crc32, and continuation must hold (checksum(b, checksum(a)) === checksum(a ++ b)).
 */
import { randomBytes, randomInt } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { native } from '../../src/block/native.ts';
import {
  BLOCK,
  blockChecksums,
  checksum,
  checksumImplementation,
  combine,
  jsBlockChecksums,
  zlibChecksum,
} from '../../src/store/checksum.ts';

const DATA = randomBytes(4 * 1024 * 1024 + 64);
const ref = (b: Uint8Array, seed = 0): number => crc32(b, seed) >>> 0;

/** Every length 0..1024 at offsets 0..7, random large lengths at random offsets, random seeds. */
function agreesWithZlib(fn: (b: Uint8Array, seed?: number) => number): void {
  for (let len = 0; len <= 1024; len++) {
    for (let off = 0; off < 8; off++) {
      const b = DATA.subarray(off, off + len);
      const seed = randomInt(0, 2 ** 32);
      if (fn(b) !== ref(b) || fn(b, seed) !== ref(b, seed))
        expect.fail(`length ${len} at offset ${off} (seed ${seed}): ${fn(b, seed)} vs ${ref(b, seed)}`);
    }
  }
  for (let i = 0; i < 200; i++) {
    const off = randomInt(0, 64);
    const len = randomInt(0, i < 100 ? 70000 : DATA.length - off);
    const b = DATA.subarray(off, off + len);
    const seed = randomInt(0, 2 ** 32);
    expect(fn(b, seed), `length ${len} at offset ${off}`).toBe(ref(b, seed));
  }
  const big = DATA.subarray(0, 4 * 1024 * 1024);
  expect(fn(big)).toBe(ref(big));
  expect(fn(Buffer.alloc(0))).toBe(0);
  expect(fn(Buffer.alloc(0), 0xdeadbeef)).toBe(0xdeadbeef);
  expect(fn(Buffer.from('123456789'))).toBe(0xcbf43926); // the standard check value
}

function continues(fn: (b: Uint8Array, seed?: number) => number): void {
  for (let i = 0; i < 100; i++) {
    const a = DATA.subarray(randomInt(0, 100), randomInt(100, 5000));
    const b = DATA.subarray(randomInt(0, 100), randomInt(100, 70000));
    expect(fn(b, fn(a))).toBe(ref(Buffer.concat([a, b])));
  }
}

describe('checksum: the same CRC-32 as zlib', () => {
  it('uses the native helper when it is built', () => {
    expect(checksumImplementation).toBe(native?.crc32 !== undefined ? 'native' : 'zlib');
  });

  it('checksum (the implementation in use) equals zlib crc32', () => {
    agreesWithZlib(checksum);
    continues(checksum);
  });

  it('the zlib fallback equals zlib crc32', () => {
    agreesWithZlib(zlibChecksum);
    continues(zlibChecksum);
  });

  it('without the native helper, the module falls back to zlib', async () => {
    vi.resetModules();
    vi.doMock('../../src/block/native.ts', () => ({ native: undefined }));
    try {
      const m = await import('../../src/store/checksum.ts');
      expect(m.checksumImplementation).toBe('zlib');
      expect(m.checksum).toBe(m.zlibChecksum);
      const data = DATA.subarray(3, 3 + 5 * BLOCK + 9);
      const out = new Uint32Array(6);
      expect(m.blockChecksums(data, out)).toBe(ref(data));
      expect(out[5]).toBe(ref(data.subarray(5 * BLOCK)));
    } finally {
      vi.doUnmock('../../src/block/native.ts');
      vi.resetModules();
    }
  });

  it('takes any typed array view: the bytes of its range, not of its whole buffer', () => {
    const u32 = new Uint32Array(DATA.buffer, DATA.byteOffset + 4, 100);
    const bytes = new Uint8Array(u32.buffer, u32.byteOffset, u32.byteLength);
    expect(checksum(u32 as unknown as Uint8Array)).toBe(ref(bytes));
    const view = new DataView(DATA.buffer, DATA.byteOffset + 3, 777);
    expect(checksum(view as unknown as Uint8Array)).toBe(ref(DATA.subarray(3, 780)));
  });

  it('block checksums: each 4 KiB piece and the whole, the last piece short', () => {
    for (const len of [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 16 * BLOCK, 16 * BLOCK + 100, 256 * BLOCK]) {
      const data = DATA.subarray(5, 5 + len);
      for (const fn of [blockChecksums, jsBlockChecksums]) {
        const out = new Uint32Array(Math.ceil(len / BLOCK) + 1).fill(7);
        expect(fn(data, out), `length ${len}`).toBe(ref(data));
        for (let k = 0; k * BLOCK < len; k++)
          expect(out[k]).toBe(ref(data.subarray(k * BLOCK, Math.min(len, (k + 1) * BLOCK))));
        expect(out[Math.ceil(len / BLOCK)]).toBe(7);
      }
    }
    const a = DATA.subarray(0, 1000);
    const b = DATA.subarray(1000, 9000);
    expect(combine(ref(a), ref(b), b.length)).toBe(ref(DATA.subarray(0, 9000)));
  });
});

describe.skipIf(native?.crc32Use === undefined)('the native helper at each level this CPU has', () => {
  const use = native?.crc32Use as (level: number) => number;
  const crc = native?.crc32 as (b: Uint8Array, seed?: number) => number;
  const best = use?.(9) ?? 0;
  afterAll(() => use(best));

  for (let level = 0; level <= best; level++) {
    it(`level ${level} equals zlib crc32`, () => {
      expect(use(level)).toBe(level);
      agreesWithZlib(crc);
      continues(crc);
    });
  }

  it('readCrcBatch: reads each buffer at its position, with its CRC and 4 KiB block CRCs; short is EIO', async () => {
    const { mkdtempSync, writeFileSync, openSync, closeSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'nbdsnap-readcrc-'));
    const file = join(dir, 'f');
    const data = DATA.subarray(0, 300_000);
    writeFileSync(file, data);
    const fd = openSync(file, 'r');
    try {
      // Two neighbours (one preadv), one apart, one that runs past the end of the file.
      const positions = [0, 65536, 200_001, 290_000];
      const bufs = [65536, 65536, 5000, 65536].map((n) => Buffer.alloc(n));
      const crcs = new Uint32Array(4);
      const sums = new Uint32Array(4 * 16);
      const errors = await new Promise<number[]>((resolve) =>
        native?.readCrcBatch?.([fd, fd, fd, fd], bufs, positions, crcs, sums, resolve),
      );
      expect(errors).toEqual([0, 0, 0, 5]);
      for (let i = 0; i < 3; i++) {
        const want = data.subarray(positions[i], (positions[i] as number) + (bufs[i] as Buffer).length);
        expect((bufs[i] as Buffer).equals(want)).toBe(true);
        expect(crcs[i]).toBe(ref(want));
        for (let k = 0; k * BLOCK < want.length; k++)
          expect(sums[i * 16 + k]).toBe(ref(want.subarray(k * BLOCK, (k + 1) * BLOCK)));
      }
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses what is not bytes, and a block table too short', () => {
    expect(() => crc('abc' as unknown as Uint8Array)).toThrow();
    expect(() => crc(Buffer.alloc(4), 'x' as unknown as number)).toThrow();
    expect(() => native?.crc32Blocks?.(Buffer.alloc(BLOCK + 1), BLOCK, new Uint32Array(1))).toThrow();
    expect(() => native?.crc32Blocks?.(Buffer.alloc(BLOCK), 0, new Uint32Array(1))).toThrow();
  });
});
