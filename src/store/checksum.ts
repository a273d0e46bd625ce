/**
 * The store's one checksum function: the journal's chain, every copied chunk, the store label and
 * the backup format. CRC-32 (IEEE, zlib's: reflected polynomial 0xEDB88320), a u32; `seed`
 * continues a previous checksum (checksum(b, checksum(a)) === checksum(a ++ b)). Every CRC-32 of
 * the code goes through `checksum`, so the values on disk are those zlib's crc32 gives.
 *
 * It runs in the native helper (src/native/crc32.c: carry-less multiplication folding, 10-20 GB/s
 * of CPU time here against zlib's 2.3-3) and falls back to Node's `zlib.crc32` without it.
 *
 * `combine` is zlib's crc32_combine: the checksum of a ++ b from the checksums of a and b and the
 * length of b, without the bytes. `blockChecksums` uses it to check a whole chunk against its
 * recorded checksum while also getting the checksum of each 4 KiB block of it, for the same
 * bytes hashed once (the snapshot read path keeps those to check later partial reads).
 */
import { crc32 } from 'node:zlib';
import { native } from '../block/native.ts';

/** The fallback: Node's zlib. */
export function zlibChecksum(buf: Uint8Array, seed = 0): number {
  return crc32(buf, seed) >>> 0;
}

const nativeCrc32 = native?.crc32;
const nativeBlocks = native?.crc32Blocks;

/** Which implementation `checksum` uses. */
export const checksumImplementation: 'native' | 'zlib' = nativeCrc32 !== undefined ? 'native' : 'zlib';

export const checksum: (buf: Buffer | Uint8Array, seed?: number) => number =
  nativeCrc32 !== undefined ? (buf, seed = 0) => nativeCrc32(buf, seed) : zlibChecksum;

/** The reflected CRC-32 polynomial. */
const POLY = 0xedb88320;

/** a * b modulo the polynomial (reflected bit order, as zlib's multmodp). */
function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if ((a & m) !== 0) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    if (m === 0) break;
    b = (b & 1) !== 0 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** x^(2^k) modulo the polynomial, k = 0..31. */
const X2N: number[] = [];
{
  let p = 0x40000000; // x^1
  for (let k = 0; k < 32; k++) {
    X2N.push(p);
    p = multModP(p, p);
  }
}

/** x^(n * 2^k) modulo the polynomial. */
function x2nModP(n: number, k: number): number {
  let p = 0x80000000; // x^0
  while (n > 0) {
    if (n % 2 === 1) p = multModP(X2N[k & 31] as number, p);
    n = Math.floor(n / 2);
    k += 1;
  }
  return p;
}

/** The operator that moves a checksum past `length` bytes (for `combineWith`). */
export function shiftFor(length: number): number {
  return x2nModP(length, 3);
}

/** checksum(a ++ b) from checksum(a), checksum(b) and b's length. */
export function combine(crcA: number, crcB: number, lengthB: number): number {
  return (multModP(shiftFor(lengthB), crcA >>> 0) ^ crcB) >>> 0;
}

/** `combine` with the operator of b's length computed once (`shiftFor`). */
export function combineWith(shift: number, crcA: number, crcB: number): number {
  return (multModP(shift, crcA >>> 0) ^ crcB) >>> 0;
}

export const BLOCK = 4096;
const SHIFT_BLOCK = shiftFor(BLOCK);

/**
 * The checksum of `data` (every byte of it), writing the checksum of each BLOCK-sized piece of
 * it into `out` (the last piece may be shorter); the same bytes are hashed once.
 */
export function blockChecksums(data: Uint8Array, out: Uint32Array): number {
  if (nativeBlocks !== undefined && out.length * BLOCK >= data.length) return nativeBlocks(data, BLOCK, out);
  return jsBlockChecksums(data, out);
}

/** `blockChecksums` one block at a time through `checksum` (without the native helper). */
export function jsBlockChecksums(data: Uint8Array, out: Uint32Array): number {
  let whole = 0;
  let k = 0;
  for (let at = 0; at < data.length; at += BLOCK, k++) {
    const end = Math.min(data.length, at + BLOCK);
    const c = checksum(data.subarray(at, end));
    out[k] = c;
    whole = at === 0 ? c : end - at === BLOCK ? combineWith(SHIFT_BLOCK, whole, c) : combine(whole, c, end - at);
  }
  return whole;
}
