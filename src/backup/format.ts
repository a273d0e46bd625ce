/**
 * The backup file format (FORMAT.md), pure: encoding and decoding of the magic, the record frame
 * (type, offset, length, payload, chained CRC-32), the header, the end marker and the undo
 * journal's header. No I/O: writer.ts and reader.ts move the bytes.
 *
 * One frame for every record, header and end marker included:
 *   u8[4] type | u32 payload length P | u64 offset | u64 length | P bytes | u32 crc
 * The CRC covers the 24-byte frame head and the payload, and starts from the previous record's
 * CRC (the first record's from the CRC of the file magic), so a dropped, duplicated or swapped
 * record fails as surely as a flipped bit. The CRC is CRC-32 (IEEE, zlib's), computed by the
 * store's checksum function (src/store/checksum.ts): a faster one there serves backups too.
 */
import { NbdsnapError } from '../errors.ts';
import { checksum } from '../store/checksum.ts';

/** File magics: a backup, and a restore's undo journal. */
export const BACKUP_MAGIC = Buffer.from('NBDSNAPB', 'latin1');
export const JOURNAL_MAGIC = Buffer.from('NBDSNAPU', 'latin1');
export const MAGIC_SIZE = 8;

export const FORMAT_VERSION = 1;
export const HEAD_SIZE = 24;
export const CRC_SIZE = 4;
/** Largest payload a reader accepts (a DATA record holds at most this much). */
export const MAX_PAYLOAD = 32 * 1024 * 1024;
/** DATA records a backup writes are at most this long (and never cross a multiple of it). */
export const PIECE = 1024 * 1024;
export const SECTOR = 512;
export const SHA256_SIZE = 32;

export const RecordType = {
  HEAD: 'HEAD',
  /** Fingerprint (SHA-256) of an unchanged block: what the target must already hold there. */
  SMPL: 'SMPL',
  DATA: 'DATA',
  /** Reads as zeroes (allocated at the source). */
  ZERO: 'ZERO',
  /** Deallocated at the source (reads as zeroes). */
  DISC: 'DISC',
  /** Undo journal: the old contents are complete and durable; writing may begin. */
  MARK: 'MARK',
  /** Undo journal: SHA-256 of what the restore left in a range. */
  HASH: 'HASH',
  END: 'END.',
} as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];
const TYPES = new Set<string>(Object.values(RecordType));

export interface RecordFrame {
  type: RecordType;
  offset: number;
  length: number;
  payload: Buffer;
}

/** The CRC a file's first record continues from. */
export const initialCrc = (magic: Buffer): number => checksum(magic);

/** Encode one record; returns its bytes and its CRC (the next record's starting value). */
export function encodeRecord(r: RecordFrame, prevCrc: number): { bytes: Buffer; crc: number } {
  const { parts, crc } = encodeRecordParts(r, prevCrc);
  return { bytes: parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts), crc };
}

/** Payloads at least this long are not copied into the frame: head, payload and CRC as three parts. */
const COPY_BELOW = 4096;

/**
 * Encode one record as the buffers to write in order: one buffer for a small record, or the
 * head, the payload itself (not copied) and the CRC for a large one.
 */
export function encodeRecordParts(r: RecordFrame, prevCrc: number): { parts: Buffer[]; crc: number } {
  const p = r.payload.length;
  const inline = p < COPY_BELOW;
  const head = Buffer.allocUnsafe(HEAD_SIZE + (inline ? p + CRC_SIZE : 0));
  head.write(r.type, 0, 4, 'latin1');
  head.writeUInt32LE(p, 4);
  writeU64(head, r.offset, 8);
  writeU64(head, r.length, 16);
  if (inline) {
    r.payload.copy(head, HEAD_SIZE);
    const crc = checksum(head.subarray(0, HEAD_SIZE + p), prevCrc);
    head.writeUInt32LE(crc, HEAD_SIZE + p);
    return { parts: [head], crc };
  }
  const crc = checksum(r.payload, checksum(head, prevCrc));
  const tail = Buffer.allocUnsafe(CRC_SIZE);
  tail.writeUInt32LE(crc, 0);
  return { parts: [head, r.payload, tail], crc };
}

/** Decode a 24-byte frame head (the payload and CRC follow it). Throws on an unknown type. */
export function decodeHead(head: Buffer): { type: RecordType; payloadLength: number; offset: number; length: number } {
  const type = head.toString('latin1', 0, 4);
  if (!TYPES.has(type)) throw new NbdsnapError('CORRUPT', `unknown record type ${JSON.stringify(type)}`);
  const payloadLength = head.readUInt32LE(4);
  if (payloadLength > MAX_PAYLOAD) throw new NbdsnapError('CORRUPT', `record payload of ${payloadLength} bytes`);
  return { type: type as RecordType, payloadLength, offset: readU64(head, 8), length: readU64(head, 16) };
}

/** The CRC of a whole record (head + payload) continuing from `prevCrc`. */
export const recordCrc = (head: Buffer, payload: Buffer, prevCrc: number): number =>
  checksum(payload, checksum(head, prevCrc));

export function writeU64(buf: Buffer, value: number, at: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`not a u64: ${value}`);
  buf.writeBigUInt64LE(BigInt(value), at);
}

export function readU64(buf: Buffer, at: number): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdsnapError('CORRUPT', `a 64-bit field is too large (${v})`);
  return Number(v);
}

// ---------------------------------------------------------------------------------------------
// Header

export interface BackupHeader {
  version: number;
  kind: 'full' | 'incremental';
  deviceSize: number;
  /** Change-tracking block size (0: unknown, e.g. tracking off on the server). */
  blockSize: number;
  /** DATA records are trimmed to multiples of this many bytes (512). */
  sectorSize: number;
  toPoint: number;
  toCreated: number;
  /** 0 for a full backup, or when FROM's point could not be learnt (its export is gone). */
  fromPoint: number;
  fromCreated: number;
  /** When the backup was started (ms since the epoch). */
  startedAt: number;
  /** Random id of this backup file (16 bytes, hex). */
  backupId: string;
  device: string;
  toName: string;
  /** '' for a full backup. */
  fromName: string;
  /** Change-tracking generation id ('' if the server has none). */
  generation: string;
  /** Where it was read from (informational). */
  source: string;
}

const HEADER_FIXED = 80;

export function encodeHeader(h: BackupHeader): Buffer {
  const fixed = Buffer.alloc(HEADER_FIXED);
  fixed.writeUInt32LE(h.version, 0);
  fixed.writeUInt32LE(h.kind === 'full' ? 1 : 2, 4);
  writeU64(fixed, h.deviceSize, 8);
  fixed.writeUInt32LE(h.blockSize, 16);
  fixed.writeUInt32LE(h.sectorSize, 20);
  writeU64(fixed, h.toPoint, 24);
  writeU64(fixed, h.toCreated, 32);
  writeU64(fixed, h.fromPoint, 40);
  writeU64(fixed, h.fromCreated, 48);
  writeU64(fixed, h.startedAt, 56);
  const id = Buffer.from(h.backupId, 'hex');
  if (id.length !== 16) throw new RangeError('backup id must be 16 bytes');
  id.copy(fixed, 64);
  return Buffer.concat([fixed, ...[h.device, h.toName, h.fromName, h.generation, h.source].map(encodeString)]);
}

export function decodeHeader(p: Buffer): BackupHeader {
  if (p.length < HEADER_FIXED) throw new NbdsnapError('CORRUPT', 'header is too short');
  const version = p.readUInt32LE(0);
  if (version !== FORMAT_VERSION)
    throw new NbdsnapError('CORRUPT', `format version ${version} (this nbdsnap reads version ${FORMAT_VERSION})`);
  const kindCode = p.readUInt32LE(4);
  if (kindCode !== 1 && kindCode !== 2) throw new NbdsnapError('CORRUPT', `unknown backup kind ${kindCode}`);
  const strings = decodeStrings(p, HEADER_FIXED, 5);
  const [device, toName, fromName, generation, source] = strings as [string, string, string, string, string];
  const h: BackupHeader = {
    version,
    kind: kindCode === 1 ? 'full' : 'incremental',
    deviceSize: readU64(p, 8),
    blockSize: p.readUInt32LE(16),
    sectorSize: p.readUInt32LE(20),
    toPoint: readU64(p, 24),
    toCreated: readU64(p, 32),
    fromPoint: readU64(p, 40),
    fromCreated: readU64(p, 48),
    startedAt: readU64(p, 56),
    backupId: p.toString('hex', 64, 80),
    device,
    toName,
    fromName,
    generation,
    source,
  };
  if (h.sectorSize === 0) throw new NbdsnapError('CORRUPT', 'header has sector size 0');
  if ((h.kind === 'full') !== (fromName === ''))
    throw new NbdsnapError('CORRUPT', 'header: a full backup has no FROM, an incremental needs one');
  return h;
}

function encodeString(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > 0xffff) throw new RangeError('string too long for the header');
  const len = Buffer.allocUnsafe(2);
  len.writeUInt16LE(b.length, 0);
  return Buffer.concat([len, b]);
}

function decodeStrings(p: Buffer, at: number, count: number): string[] {
  const out: string[] = [];
  let pos = at;
  for (let i = 0; i < count; i++) {
    if (pos + 2 > p.length) throw new NbdsnapError('CORRUPT', 'header is truncated');
    const n = p.readUInt16LE(pos);
    if (pos + 2 + n > p.length) throw new NbdsnapError('CORRUPT', 'header is truncated');
    out.push(p.toString('utf8', pos + 2, pos + 2 + n));
    pos += 2 + n;
  }
  return out; // bytes after the known strings are future fields, ignored by version 1 readers
}

// ---------------------------------------------------------------------------------------------
// End marker

export interface EndTotals {
  /** Records between the header and the end marker. */
  records: number;
  dataBytes: number;
  zeroBytes: number;
  discardBytes: number;
  samples: number;
}

/** END payload: the totals, then the SHA-256 of every file byte before the END record. */
export function encodeEnd(t: EndTotals, sha256: Buffer): Buffer {
  const b = Buffer.alloc(40 + SHA256_SIZE);
  writeU64(b, t.records, 0);
  writeU64(b, t.dataBytes, 8);
  writeU64(b, t.zeroBytes, 16);
  writeU64(b, t.discardBytes, 24);
  writeU64(b, t.samples, 32);
  sha256.copy(b, 40);
  return b;
}

export function decodeEnd(p: Buffer): { totals: EndTotals; sha256: Buffer } {
  if (p.length !== 40 + SHA256_SIZE) throw new NbdsnapError('CORRUPT', 'end marker has the wrong size');
  return {
    totals: {
      records: readU64(p, 0),
      dataBytes: readU64(p, 8),
      zeroBytes: readU64(p, 16),
      discardBytes: readU64(p, 24),
      samples: readU64(p, 32),
    },
    sha256: Buffer.from(p.subarray(40)),
  };
}

// ---------------------------------------------------------------------------------------------
// Undo journal header

export interface JournalHeader {
  version: number;
  /** The target's size before the restore (a new or empty file grown by the restore: 0). */
  sizeBefore: number;
  /** The target's size during and after the restore. */
  sizeAfter: number;
  /** The target did not exist: undo removes it. */
  created: boolean;
  createdAt: number;
  target: string;
  /** The backup files applied, by backup id, in order (informational). */
  chain: string;
}

export function encodeJournalHeader(h: JournalHeader): Buffer {
  const fixed = Buffer.alloc(32);
  fixed.writeUInt32LE(h.version, 0);
  fixed.writeUInt32LE(h.created ? 1 : 0, 4);
  writeU64(fixed, h.sizeBefore, 8);
  writeU64(fixed, h.sizeAfter, 16);
  writeU64(fixed, h.createdAt, 24);
  return Buffer.concat([fixed, encodeString(h.target), encodeString(h.chain)]);
}

export function decodeJournalHeader(p: Buffer): JournalHeader {
  if (p.length < 32) throw new NbdsnapError('CORRUPT', 'journal header is too short');
  const version = p.readUInt32LE(0);
  if (version !== FORMAT_VERSION) throw new NbdsnapError('CORRUPT', `journal format version ${version}`);
  const [target, chain] = decodeStrings(p, 32, 2) as [string, string];
  return {
    version,
    created: (p.readUInt32LE(4) & 1) !== 0,
    sizeBefore: readU64(p, 8),
    sizeAfter: readU64(p, 16),
    createdAt: readU64(p, 24),
    target,
    chain,
  };
}
