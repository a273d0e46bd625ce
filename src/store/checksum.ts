/**
 * The store's one checksum function: the journal's chain and every copied chunk. CRC-32 (IEEE)
 * from Node's own zlib, chosen by measurement (src/store/README.md): as fast as the alternatives
 * for the chunk sizes used, within a few microseconds per 64 KiB chunk, and no dependency. A u32;
 * `seed` continues a previous checksum (checksum(b, checksum(a)) === checksum(a ++ b)).
 */
import { crc32 } from 'node:zlib';

export function checksum(buf: Buffer | Uint8Array, seed = 0): number {
  return crc32(buf, seed) >>> 0;
}
