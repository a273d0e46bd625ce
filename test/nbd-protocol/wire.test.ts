/**
 * readU64 / writeU64: 64-bit big-endian values carried as numbers, exact up to 2^53.
 */
import { describe, expect, it } from 'vitest';
import { readU64, writeU64 } from '../../src/nbd-protocol/index.ts';

describe('u64 as number', () => {
  const cases: [number, string][] = [
    [0, '0000000000000000'],
    [1, '0000000000000001'],
    [0xffffffff, '00000000ffffffff'],
    [2 ** 32, '0000000100000000'],
    [2 ** 32 + 1, '0000000100000001'],
    [2 ** 40 + 512, '0000010000000200'],
    [Number.MAX_SAFE_INTEGER, '001fffffffffffff'],
  ];

  for (const [value, hex] of cases) {
    it(`writes and reads ${value}`, () => {
      const b = Buffer.alloc(10, 0xaa);
      writeU64(b, value, 1);
      expect(b.toString('hex')).toBe(`aa${hex}aa`);
      expect(readU64(b, 1)).toBe(value);
      expect(BigInt(readU64(b, 1))).toBe(b.readBigUInt64BE(1));
    });
  }

  it('reads values above 2^53 as the nearest number', () => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(0xffffffffffffffffn, 0);
    expect(readU64(b, 0)).toBe(2 ** 64);
    b.writeBigUInt64BE(2n ** 60n, 0);
    expect(readU64(b, 0)).toBe(2 ** 60);
  });
});
