/**
 * The store's superblock: what a store is (format version, chunk size, identity), where its
 * journal starts, and every range it is made of, so ranges appended at run time are found again
 * on restart. Two copies (A at byte 0 of the first range, B at 64 KiB) are written alternately
 * with a rising generation; the valid copy with the higher generation wins, so a torn update
 * leaves the previous one intact.
 *
 * Layout of a copy: "NBDSNAP-STORE\0\0\0" | u32 version | u32 generation | u32 crc32 | u32 json
 * length | JSON {chunkSize, uuid, firstJournalSlot, ranges}. The CRC covers everything but itself.
 */
import { randomUUID } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { NbdsnapError } from '../errors.ts';
import type { StoreRange } from './space.ts';

export const SUPERBLOCK_COPY = 64 * 1024;
/** Bytes at the start of the first range reserved for the two copies. */
export const SUPERBLOCK_AREA = 2 * SUPERBLOCK_COPY;
export const STORE_VERSION = 1;
const MAGIC = Buffer.from('NBDSNAP-STORE\0\0\0', 'latin1');

export interface Superblock {
  generation: number;
  chunkSize: number;
  uuid: string;
  firstJournalSlot: number;
  ranges: StoreRange[];
  /** Set when a metadata commit failed: what the journal holds may be incomplete. */
  failed?: string;
}

export function newSuperblock(chunkSize: number, ranges: StoreRange[], firstJournalSlot: number): Superblock {
  return { generation: 1, chunkSize, uuid: randomUUID(), firstJournalSlot, ranges };
}

export function encodeSuperblock(sb: Superblock): Buffer {
  const json = Buffer.from(
    JSON.stringify({
      chunkSize: sb.chunkSize,
      uuid: sb.uuid,
      firstJournalSlot: sb.firstJournalSlot,
      ranges: sb.ranges,
      ...(sb.failed === undefined ? {} : { failed: sb.failed }),
    }),
  );
  if (32 + json.length > SUPERBLOCK_COPY) {
    throw new NbdsnapError('BAD_ARGUMENT', 'too many store ranges to record in the superblock');
  }
  const b = Buffer.alloc(SUPERBLOCK_COPY);
  MAGIC.copy(b, 0);
  b.writeUInt32LE(STORE_VERSION, 16);
  b.writeUInt32LE(sb.generation, 20);
  b.writeUInt32LE(json.length, 28);
  json.copy(b, 32);
  b.writeUInt32LE(checksum(b, json.length), 24);
  return b;
}

function checksum(b: Buffer, jsonLength: number): number {
  const copy = Buffer.from(b.subarray(0, 32 + jsonLength));
  copy.writeUInt32LE(0, 24);
  return crc32(copy);
}

export type SuperblockRead = { state: 'blank' } | { state: 'valid'; sb: Superblock; slot: 0 | 1 };

/**
 * Read both copies. Neither has the magic: a blank store (format it). Some copy has the magic but
 * none is valid, or the version is unknown: a CORRUPT error (never reformat over it).
 */
export function decodeSuperblocks(a: Buffer, b: Buffer): SuperblockRead {
  const copies = [a, b].map((buf) => decodeCopy(buf));
  if (copies.every((c) => c === 'blank')) return { state: 'blank' };
  let best: { sb: Superblock; slot: 0 | 1 } | undefined;
  copies.forEach((c, i) => {
    if (typeof c === 'object' && (best === undefined || c.generation > best.sb.generation))
      best = { sb: c, slot: i as 0 | 1 };
  });
  if (best === undefined) {
    const why = copies.find((c) => typeof c === 'string' && c !== 'blank') ?? 'unreadable';
    throw new NbdsnapError(
      'CORRUPT',
      `difference store superblock is corrupt (${why}); refusing to use or reformat it`,
    );
  }
  return { state: 'valid', ...best };
}

function decodeCopy(buf: Buffer): Superblock | string {
  if (!buf.subarray(0, 16).equals(MAGIC)) return 'blank';
  const version = buf.readUInt32LE(16);
  if (version !== STORE_VERSION) return `format version ${version}, this nbdsnap reads ${STORE_VERSION}`;
  const jsonLength = buf.readUInt32LE(28);
  if (32 + jsonLength > buf.length) return 'length field out of range';
  if (checksum(buf, jsonLength) !== buf.readUInt32LE(24)) return 'checksum mismatch';
  try {
    const j = JSON.parse(buf.subarray(32, 32 + jsonLength).toString('utf8')) as Omit<Superblock, 'generation'>;
    return { generation: buf.readUInt32LE(20), ...j };
  } catch {
    return 'unparsable contents';
  }
}
