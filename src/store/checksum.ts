/**
 * The store's one checksum function (journal chain, and later chunk data). CRC-32 through Node's
 * built-in `zlib.crc32`; `seed` continues a running checksum.
 */
import { crc32 } from 'node:zlib';

export function checksum(buf: Buffer, seed = 0): number {
  return crc32(buf, seed);
}
