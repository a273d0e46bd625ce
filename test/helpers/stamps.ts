/**
 * Stamped sectors, in the style of blksnap's corruption test: every 512-byte sector a test writes
 * carries a header (magic, the writing operation's sequence number, the sector's own number, a
 * CRC of the sector) and a payload derived from both numbers. The content of any byte is
 * therefore fully determined by (operation, position), a model can be rebuilt from the operation
 * log, and when a comparison fails the stamp says which write the bytes came from and whether
 * they landed at the right place (blksnap's `diff_storage` test finds misplaced COW data the same
 * way).
 */
import { crc32 } from 'node:zlib';

export const SECTOR = 512;
const MAGIC = 0x5453534e; // "NSST"

/** Fill `out` (sector-aligned, whole sectors) with the stamped sectors of `seq` from `firstSector`. */
function stampInto(out: Uint32Array, seq: number, firstSector: number): void {
  const sectors = out.length / 128;
  const bytes = Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  for (let s = 0; s < sectors; s++) {
    const sector = firstSector + s;
    const w = s * 128;
    out[w] = MAGIC;
    out[w + 1] = seq >>> 0;
    out[w + 2] = sector >>> 0;
    let x = (Math.imul(seq + 0x3c6ef372, 0x9e3779b1) ^ Math.imul(sector + 1, 0x85ebca6b)) >>> 0 || 1;
    for (let i = 4; i < 128; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      out[w + i] = x;
    }
    const at = s * SECTOR;
    out[w + 3] = crc32(bytes.subarray(at + 16, at + SECTOR), crc32(bytes.subarray(at, at + 12)));
  }
}

/** The bytes operation `seq` writes at [offset, offset + length): slices of its stamped sectors. */
export function stampedData(seq: number, offset: number, length: number): Buffer {
  const first = Math.floor(offset / SECTOR);
  const last = Math.floor((offset + length - 1) / SECTOR);
  const words = new Uint32Array((last - first + 1) * 128);
  stampInto(words, seq, first);
  const all = Buffer.from(words.buffer);
  const from = offset - first * SECTOR;
  return all.subarray(from, from + length);
}

/** What a sector holds, for failure messages: whose stamp, and whether it is intact and in place. */
export function describeSector(buf: Buffer, at: number, expectedSector?: number): string {
  const s = buf.subarray(at, at + SECTOR);
  if (s.length < 16) return `${s.length} trailing bytes`;
  if (s.every((b) => b === 0)) return 'zeros';
  if (s.readUInt32LE(0) !== MAGIC) return `no stamp (starts ${s.subarray(0, 8).toString('hex')})`;
  const seq = s.readUInt32LE(4);
  const sector = s.readUInt32LE(8);
  const intact =
    s.length === SECTOR && crc32(s.subarray(16), crc32(s.subarray(0, 12))) === s.readUInt32LE(12) ? 'intact' : 'torn';
  const where = expectedSector === undefined || expectedSector === sector ? '' : ` MISPLACED (belongs at ${sector})`;
  return `stamp of op ${seq} for sector ${sector}, ${intact}${where}`;
}

/**
 * undefined when `got` equals `want`; otherwise where they first differ, what each side's sector
 * holds, and how many bytes differ. `base` is the device offset of byte 0 of both buffers.
 */
export function diffImages(got: Buffer, want: Buffer, base = 0): string | undefined {
  if (got.equals(want)) return undefined;
  if (got.length !== want.length) return `length ${got.length}, want ${want.length}`;
  let first = -1;
  let count = 0;
  for (let i = 0; i < got.length; i++) {
    if (got[i] !== want[i]) {
      if (first < 0) first = i;
      count++;
    }
  }
  const pos = base + first;
  const sector = Math.floor(pos / SECTOR);
  const at = sector * SECTOR - base;
  const start = Math.max(0, at);
  return (
    `${count} bytes differ; first at device offset ${pos} (sector ${sector}): ` +
    `got ${describeSector(got, start, sector)}; want ${describeSector(want, start, sector)}`
  );
}

/** A device image whose every sector carries the stamp of operation `seq` (the "generation 0" fill). */
export function stampedImage(size: number, seq = 0): Buffer {
  return stampedData(seq, 0, size);
}
