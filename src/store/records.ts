/**
 * The metadata journal's on-disk records, pure encode/decode (little-endian, dm-snap style).
 *
 * Record:  u32 magic "NSJR" | u16 type | u16 payload length | u64 seq | u32 crc32 | payload,
 *          padded to a multiple of 8. The CRC covers the header (with the CRC field zeroed) and
 *          the payload. `seq` rises by one per record. Records are written in batches, each
 *          closed by a COMMIT record naming the batch's first seq and size and chaining a
 *          checksum across batches: replay applies whole batches only (see journal.ts).
 * Block:   the journal lives in store slots chained together. Each block starts with
 *          u32 magic "NSJB" | u32 index | u32 next slot | u32 generation | u64 first seq |
 *          u32 crc | pad, 32 bytes; records follow. The next block is allocated when a block is
 *          started, so the chain is on disk before it is needed. `generation` is the journal's
 *          (range 0's label `journalGeneration`, 0 before the first checkpoint): a block of an
 *          older journal is never taken for one of the current journal.
 */
import { checksum } from './checksum.ts';
import { decodePayload, encodePayload } from './record-payloads.ts';

export const RECORD_MAGIC = 0x524a534e; // "NSJR" little-endian
export const BLOCK_MAGIC = 0x424a534e; // "NSJB"
export const RECORD_HEADER = 20;
export const BLOCK_HEADER = 32;

export const RecordType = {
  DEVICE: 1,
  SNAPSHOT: 2,
  DELETE: 3,
  INVALID: 4,
  EXCEPTION: 5,
  PRIVATE: 6,
  MERGE: 7,
  MERGED: 8,
  COMMIT: 9,
  CBT: 10,
  CBT_GEN: 11,
  CLEAN: 12,
  LOST: 13,
  FORGET: 16,
  CHECKPOINT: 14,
  BOOKMARK: 15,
  MERGE_PLAN: 17,
} as const;

/** Record type names by type code (decoding without a search). */
const TYPE_NAMES: (keyof typeof RecordType | undefined)[] = [];
for (const [name, code] of Object.entries(RecordType)) TYPE_NAMES[code] = name as keyof typeof RecordType;
/** Chunk runs per MERGE_PLAN record: 12 bytes each, so a payload stays far below the u16 limit. */
export const MERGE_PLAN_RUNS = 2048;
/** CRC-32 (IEEE, reflected) byte table, to continue a checksum over the 4 zero bytes of a record's CRC field. */
const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

/** checksum(4 zero bytes, crc): in JS, cheaper than a native call. */
function crcZero4(crc: number): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < 4; i++) c = ((CRC_TABLE[c & 0xff] as number) ^ (c >>> 8)) >>> 0;
  return ~c >>> 0;
}

export type JournalRecord =
  | { type: 'DEVICE'; device: number; size: number; name: string }
  | {
      type: 'SNAPSHOT';
      created: number;
      name: string;
      members: { snapshot: number; device: number; seq: number; writable: boolean }[];
    }
  | { type: 'DELETE'; snapshot: number }
  | { type: 'INVALID'; snapshot: number; reason: string }
  /** `crc`: checksum (src/store/checksum.ts) of the chunk as written to the slot, chunk-length bytes. */
  | { type: 'EXCEPTION'; device: number; seq: number; chunk: number; slot: number; crc: number }
  | { type: 'PRIVATE'; snapshot: number; chunk: number; slot: number; crc: number }
  /** The copy of `chunk` in `slot` was found damaged (checksum mismatch): reads of it answer EIO. */
  | { type: 'LOST'; device: number; chunk: number; slot: number }
  | { type: 'MERGE'; snapshot: number; deferred: boolean }
  | { type: 'MERGED'; snapshot: number; chunk: number; count: number }
  /** Blocks [block, block+count) of a device were first written in `era`. */
  | { type: 'CBT'; device: number; era: number; block: number; count: number }
  /**
   * The snapshot point `name` of a device (a deleted snapshot's) is forgotten: `--since name` is
   * refused from now on, and the eras no remaining point needs are dropped or merged.
   */
  | { type: 'FORGET'; device: number; name: string }
  /** Change tracking of a device (re)started: block size and a new generation id. */
  | { type: 'CBT_GEN'; device: number; blockSize: number; generation: string }
  /**
   * Ends a batch (group commit): the batch's first sequence number, its record count, and the
   * chain value: checksum(previous batch's chain, u32 LE || the batch's records as encoded).
   */
  | { type: 'COMMIT'; firstSeq: number; count: number; chain: number }
  /** A graceful stop (milliseconds since the epoch), written as a batch of its own. */
  | { type: 'CLEAN'; at: number }
  /**
   * The first record of a checkpoint (a journal that starts with the state, not the history):
   * the catalog's counters, and when it was written (ms since the epoch).
   */
  | { type: 'CHECKPOINT'; nextSnapshotId: number; nextSeq: number; at: number }
  /** A change-tracking point kept after its snapshot was deleted (written by checkpoints). */
  | { type: 'BOOKMARK'; device: number; name: string; seq: number }
  /**
   * Part of the chunk list of a merge, as fixed at its MERGE (written by checkpoints, before that
   * MERGE): runs [chunk, chunk + count). Several records append to one list.
   */
  | { type: 'MERGE_PLAN'; snapshot: number; runs: [number, number][] };

const pad8 = (n: number): number => (n + 7) & ~7;

/** Encode a record with its sequence number. */
export function encodeRecord(rec: JournalRecord, seq: number): Buffer {
  const payload = encodePayload(rec);
  const total = pad8(RECORD_HEADER + payload.length);
  const b = Buffer.alloc(total);
  b.writeUInt32LE(RECORD_MAGIC, 0);
  b.writeUInt16LE(RecordType[rec.type], 4);
  b.writeUInt16LE(payload.length, 6);
  b.writeBigUInt64LE(BigInt(seq), 8);
  payload.copy(b, RECORD_HEADER);
  b.writeUInt32LE(checksum(b.subarray(0, RECORD_HEADER + payload.length)), 16);
  return b;
}

/**
 * Encode `rec` straight into `target` at `offset`, whose bytes there must be zeros (a block being
 * filled): the same bytes as `encodeRecord`, without allocating for the common fixed-size types.
 * Returns the bytes taken, or 0 when they do not fit before `target`'s end (nothing written).
 */
export function encodeRecordInto(target: Buffer, offset: number, rec: JournalRecord, seq: number): number {
  let len: number;
  if (rec.type === 'EXCEPTION') len = 24;
  else if (rec.type === 'CBT') len = 20;
  else {
    const b = encodeRecord(rec, seq);
    if (offset + b.length > target.length) return 0;
    b.copy(target, offset);
    return b.length;
  }
  const total = pad8(RECORD_HEADER + len);
  if (offset + total > target.length) return 0;
  target.writeUInt32LE(RECORD_MAGIC, offset);
  target.writeUInt16LE(RecordType[rec.type], offset + 4);
  target.writeUInt16LE(len, offset + 6);
  writeU64(target, offset + 8, seq);
  const p = offset + RECORD_HEADER;
  if (rec.type === 'EXCEPTION') {
    target.writeUInt32LE(rec.device, p);
    target.writeUInt32LE(rec.seq, p + 4);
    writeU64(target, p + 8, rec.chunk);
    target.writeUInt32LE(rec.slot, p + 16);
    target.writeUInt32LE(rec.crc >>> 0, p + 20);
  } else {
    target.writeUInt32LE(rec.device, p);
    target.writeUInt32LE(rec.era, p + 4);
    writeU64(target, p + 8, rec.block);
    target.writeUInt32LE(rec.count, p + 16);
  }
  target.writeUInt32LE(checksum(target.subarray(offset, p + len)), offset + 16);
  return total;
}

function writeU64(b: Buffer, at: number, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${n} is not a u64 the journal can hold`);
  b.writeUInt32LE(n % 0x100000000, at);
  b.writeUInt32LE(Math.floor(n / 0x100000000), at + 4);
}

export type DecodeResult = { record: JournalRecord; seq: number; size: number } | { bad: string };

/** Decode the record at `offset` of a journal block; `bad` says why it is not a valid record. */
export function decodeRecord(buf: Buffer, offset: number): DecodeResult {
  if (offset + RECORD_HEADER > buf.length) return { bad: 'end of block' };
  if (buf.readUInt32LE(offset) !== RECORD_MAGIC) return { bad: 'no record magic' };
  const typeCode = buf.readUInt16LE(offset + 4);
  const len = buf.readUInt16LE(offset + 6);
  if (offset + RECORD_HEADER + len > buf.length) return { bad: 'record runs past its block' };
  const seq = Number(buf.readBigUInt64LE(offset + 8));
  const stored = buf.readUInt32LE(offset + 16);
  // The CRC covers the header with its CRC field as zeros, then the payload: no copy needed.
  const payload = buf.subarray(offset + RECORD_HEADER, offset + RECORD_HEADER + len);
  if (checksum(payload, crcZero4(checksum(buf.subarray(offset, offset + 16)))) !== stored)
    return { bad: 'checksum mismatch' };
  const type = TYPE_NAMES[typeCode];
  if (type === undefined) return { bad: `unknown record type ${typeCode}` };
  const record = decodePayload(type, payload);
  return { record, seq, size: pad8(RECORD_HEADER + len) };
}

export interface BlockHeader {
  index: number;
  next: number;
  firstSeq: number;
  /** The journal's generation (0 before the first checkpoint). */
  generation: number;
}

export function encodeBlockHeader(h: Omit<BlockHeader, 'generation'> & { generation?: number }): Buffer {
  const b = Buffer.alloc(BLOCK_HEADER);
  b.writeUInt32LE(BLOCK_MAGIC, 0);
  b.writeUInt32LE(h.index, 4);
  b.writeUInt32LE(h.next, 8);
  b.writeUInt32LE((h.generation ?? 0) >>> 0, 12);
  b.writeBigUInt64LE(BigInt(h.firstSeq), 16);
  b.writeUInt32LE(checksum(b.subarray(0, 24)), 24);
  return b;
}

export function decodeBlockHeader(b: Buffer): BlockHeader | undefined {
  if (b.length < BLOCK_HEADER || b.readUInt32LE(0) !== BLOCK_MAGIC) return undefined;
  if (checksum(b.subarray(0, 24)) !== b.readUInt32LE(24)) return undefined;
  return {
    index: b.readUInt32LE(4),
    next: b.readUInt32LE(8),
    firstSeq: Number(b.readBigUInt64LE(16)),
    generation: b.readUInt32LE(12),
  };
}
