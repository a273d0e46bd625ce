/**
 * Store labels (format version 2): every store range describes itself, like an LVM
 * physical-volume label or an md superblock. A range starts with a 128 KiB label area holding two
 * copies of its label (A at 0, B at 64 KiB). Updates alternate copies with a rising generation;
 * the valid copy with the higher generation wins, so a torn update leaves the older one intact.
 *
 * Layout of a copy (little-endian): "NBDSNAP-STORE\0\0\0" (16) | u32 version | u32 generation |
 * u32 crc32 | u32 json length | JSON. The CRC (zlib crc32) covers the header (CRC field as 0) and
 * the JSON.
 *
 * JSON of every range: {kind, uuid, index, id, start, length, chunkSize, first?}. `id` is the
 * range's own random identity (two ranges of one store never share it); `first` is where range 0
 * was when this range was labelled (a hint for messages). Range 0's label also holds the store's
 * record (what the version-1 superblock held): `ranges` (path, start, length, id per index),
 * `firstJournalSlot` and `journalGeneration?` (persistent stores) and `failed?` (see superblock.ts).
 *
 * Pure: no I/O here.
 */
import { checksum } from './checksum.ts';
import { NbdsnapError } from '../errors.ts';
import type { StoreRange } from './space.ts';

export const LABEL_COPY = 64 * 1024;
/** Bytes at the start of every range reserved for the two label copies. */
export const LABEL_AREA = 2 * LABEL_COPY;
export const STORE_VERSION = 2;
export const LABEL_MAGIC = Buffer.from('NBDSNAP-STORE\0\0\0', 'latin1');
const HEADER = 32;

export type StoreKind = 'persistent' | 'transient';

/** A range as range 0's record lists it. */
export interface RecordedRange extends StoreRange {
  id: string;
}

export interface Label {
  generation: number;
  kind: StoreKind;
  /** The store's identity, the same in every range's label. */
  uuid: string;
  /** Position of this range in the store (range 0 holds the record). */
  index: number;
  /** This range's own identity. */
  id: string;
  /** The range's extent in its file or device, in bytes, as labelled. */
  start: number;
  length: number;
  chunkSize: number;
  /** Ranges > 0: where range 0 was when this one was labelled (to name it in messages). */
  first?: StoreRange;
  /** Range 0: every range of the store, by index. */
  ranges?: RecordedRange[];
  /** Range 0 of a persistent store: the journal's first block. */
  firstJournalSlot?: number;
  /** Range 0: set when a metadata commit failed (what the journal holds may be incomplete). */
  failed?: string;
  /**
   * Range 0: set by a graceful stop to the sequence number the journal continues at after its
   * CLEAN batch, and cleared at the next start: a journal found ending anywhere else after a clean
   * stop lost its end (a lost or zeroed write), which replay alone would take for a crash.
   */
  cleanAt?: number;
  /**
   * Range 0 of a persistent store: the journal's generation (absent: 0). Every block of the
   * journal carries it; a checkpoint writes a new journal under the next generation, then this
   * label switches to it (records.ts, checkpoint-writer.ts).
   */
  journalGeneration?: number;
}

/** One copy: LABEL_COPY bytes. */
export function encodeLabel(label: Label): Buffer {
  const { generation, kind, ...fields } = label;
  // `kind` first: a label whose headers are damaged is still recognised by its JSON (signatures.ts).
  const json = Buffer.from(JSON.stringify({ kind, ...fields }));
  if (HEADER + json.length > LABEL_COPY) {
    throw new NbdsnapError('BAD_ARGUMENT', 'too many store ranges to record in the store label');
  }
  const b = Buffer.alloc(LABEL_COPY);
  LABEL_MAGIC.copy(b, 0);
  b.writeUInt32LE(STORE_VERSION, 16);
  b.writeUInt32LE(generation, 20);
  b.writeUInt32LE(json.length, 28);
  json.copy(b, HEADER);
  b.writeUInt32LE(copyChecksum(b, json.length), 24);
  return b;
}

/** Both copies of a label written at once (a range labelled for the first time): LABEL_AREA bytes. */
export function encodeLabelPair(label: Label): Buffer {
  const a = encodeLabel(label);
  const b = encodeLabel({ ...label, generation: label.generation + 1 });
  return Buffer.concat([a, b]);
}

/** Where the next update of a label goes: the copy its (already raised) generation selects. */
export const copyOffset = (generation: number): number => (generation % 2) * LABEL_COPY;

function copyChecksum(b: Buffer, jsonLength: number): number {
  const copy = Buffer.from(b.subarray(0, HEADER + jsonLength));
  copy.writeUInt32LE(0, 24);
  return checksum(copy);
}

export type CopyRead =
  | { state: 'none' }
  | { state: 'valid'; label: Label }
  | { state: 'version'; version: number }
  | { state: 'bad'; why: string };

/** Decode one copy. */
export function decodeLabelCopy(buf: Buffer): CopyRead {
  if (buf.length < HEADER || !buf.subarray(0, 16).equals(LABEL_MAGIC)) return { state: 'none' };
  const version = buf.readUInt32LE(16);
  if (version !== STORE_VERSION) return { state: 'version', version };
  const jsonLength = buf.readUInt32LE(28);
  if (HEADER + jsonLength > Math.min(buf.length, LABEL_COPY)) return { state: 'bad', why: 'length field out of range' };
  if (copyChecksum(buf, jsonLength) !== buf.readUInt32LE(24)) return { state: 'bad', why: 'checksum mismatch' };
  let j: unknown;
  try {
    j = JSON.parse(buf.subarray(HEADER, HEADER + jsonLength).toString('utf8'));
  } catch {
    return { state: 'bad', why: 'unparsable contents' };
  }
  const label = { generation: buf.readUInt32LE(20), ...(j as object) } as Label;
  const why = checkFields(label);
  return why === undefined ? { state: 'valid', label } : { state: 'bad', why };
}

const isCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
const isRange = (r: unknown): boolean => {
  const x = r as Partial<RecordedRange> | null;
  return typeof x === 'object' && x !== null && typeof x.path === 'string' && isCount(x.start) && isCount(x.length);
};

/** Why a checksummed label still cannot be used (written by something that is not this format). */
function checkFields(l: Label): string | undefined {
  if (l.kind !== 'persistent' && l.kind !== 'transient') return 'unknown kind';
  if (typeof l.uuid !== 'string' || typeof l.id !== 'string') return 'no identity';
  if (!isCount(l.index) || !isCount(l.start) || !isCount(l.length) || !isCount(l.chunkSize)) return 'bad extent';
  if (l.index === 0) {
    if (!Array.isArray(l.ranges) || l.ranges.length === 0 || !l.ranges.every(isRange)) return 'no range record';
    if (l.kind === 'persistent' && !isCount(l.firstJournalSlot)) return 'no journal';
    if (l.cleanAt !== undefined && !isCount(l.cleanAt)) return 'bad clean-stop mark';
    if (l.journalGeneration !== undefined && !(isCount(l.journalGeneration) && l.journalGeneration <= 0xffffffff))
      return 'bad journal generation';
  }
  return undefined;
}

export type LabelRead =
  /** Neither copy carries the magic. */
  | { state: 'none' }
  /** The valid copy with the highest generation, and which copy it is. */
  | { state: 'valid'; label: Label; slot: 0 | 1 }
  /** A copy of another format version (1: the format before labels) and no valid one. */
  | { state: 'version'; version: number }
  /** Some copy carries the magic, none is valid. */
  | { state: 'unreadable'; why: string };

/** Decode the two copies of a range's label area. */
export function decodeLabels(a: Buffer, b: Buffer): LabelRead {
  const copies = [decodeLabelCopy(a), decodeLabelCopy(b)];
  let best: { label: Label; slot: 0 | 1 } | undefined;
  copies.forEach((c, i) => {
    if (c.state === 'valid' && (best === undefined || c.label.generation > best.label.generation))
      best = { label: c.label, slot: i as 0 | 1 };
  });
  if (best !== undefined) return { state: 'valid', ...best };
  if (copies.every((c) => c.state === 'none')) return { state: 'none' };
  const old = copies.find((c) => c.state === 'version');
  if (old !== undefined) return { state: 'version', version: old.version };
  const bad = copies.find((c) => c.state === 'bad');
  return { state: 'unreadable', why: bad?.why ?? 'unreadable' };
}

/** Decode a label area (at least LABEL_AREA bytes, or what a short range holds). */
export function decodeLabelArea(area: Buffer): LabelRead {
  return decodeLabels(area.subarray(0, LABEL_COPY), area.subarray(LABEL_COPY, LABEL_AREA));
}

/** "PATH:START+COUNT" in 512-byte sectors, the way ranges are given on the command line. */
export const rangeSpec = (r: StoreRange): string => `${r.path}:${r.start / 512}+${r.length / 512}`;
