/**
 * Reading the metadata journal back (replay): decode the chain of blocks into whole batches, then
 * decide what follows the last whole batch: nothing, a batch torn by a crash (dropped), or damage
 * (a CORRUPT error). The format, the writer and the crash model are described in journal.ts; the
 * rule applied here, in short (README.md says the same):
 *
 * Replay decodes records in sequence until one is not the expected next record. Where a block's
 * records end (the rest reads as the 0xFF filler or as zeros), it follows the chain only if the
 * next block's header is valid and starts with the expected record; the skipped end of the block
 * must then be filler or zeros, sector by sector. P is the end of the last whole batch (its COMMIT
 * decoded, its first seq, count and chained checksum verified), Q the point where decoding stopped.
 * A *piece* is a 512-byte sector of a block cut to the part at or after P (whole sectors in later
 * blocks). After a crash, what follows P is at most one unacknowledged batch whose pieces each
 * read either as written or as zeros. So:
 *
 * 1. Everything after P zero (the rest of P's block and the whole next block): the journal ends
 *    at P. Nothing was torn.
 * 2. Otherwise the bytes after P must be a torn batch, or it is damage:
 *    a. at Q, bytes that are neither zeros, the filler nor a record magic: damage;
 *    b. at Q, a record magic, but the record does not decode: torn only if a piece overlapping
 *       the record reads all zeros. The record's extent is its header's length (a COMMIT's fixed
 *       size when its type says COMMIT), cut at the next record that decodes; a length running
 *       past the block, or a COMMIT of another length, is damage;
 *    c. at Q, zeros: the record was not written (torn); at Q, the filler or the block's end: the
 *       writer moved on to the next block, so that block's first sector must read as zeros
 *       (its header unwritten). A next block whose first sector is not zero must have a valid
 *       header with the next index and, after zeros at Q only, a later first seq; else damage;
 *    d. in every case, a record that decodes anywhere after Q (in Q's block, the next one, and
 *       the blocks chained after it) with a seq before P's, or a COMMIT of a batch other than the
 *       one starting at P, is damage: a later batch was committed, so this one was acknowledged.
 *
 * Damage in a completed batch leaves no zero piece in it (the writer fills the unused end of a
 * block), so one byte changed anywhere in a completed batch is a CORRUPT error, also in the last
 * batch; records other than the COMMIT are checked by their CRC, padding by the chained
 * checksum. A completed batch could still hold a run of 512 zero bytes inside one record's
 * payload (a name or reason of NULs): damage to that record would then read as torn.
 */
import { NbdsnapError } from '../errors.ts';
import { checksum } from './checksum.ts';
import {
  BLOCK_HEADER,
  type BlockHeader,
  decodeBlockHeader,
  decodeRecord,
  type JournalRecord,
  RECORD_HEADER,
  RECORD_MAGIC,
  RecordType,
} from './records.ts';

export const SECTOR = 512;
/** The unused end of a block the writer left for the next one is filled with this byte. */
export const FILL = 0xff;
/** Size of a COMMIT record as encoded (header, 16-byte payload). */
const COMMIT_SIZE = RECORD_HEADER + 20;
const COMMIT_PAYLOAD = 16;

export interface JournalBlock {
  index: number;
  slot: number;
  buf: Buffer;
  /** The slot the chain continues in. */
  next: number;
}

/** A position in the journal between records. */
export interface ScanPoint {
  block: JournalBlock;
  offset: number;
  /** Sequence number of the record that goes here. */
  seq: number;
  /** Chain value of the batches before this point. */
  chain: number;
}

/** Reads one journal block (a whole slot); throws on a read error. */
export type ReadBlock = (slot: number, index: number) => Promise<Buffer>;

export interface ScanResult {
  /** Slots of the blocks read along the chain, by block index. */
  slots: number[];
  /** The state records of every whole batch, in order (no COMMIT or CLEAN). */
  records: JournalRecord[];
  batches: number;
  /** After the last whole batch. */
  end: ScanPoint;
  /** The last whole batch: where it starts, its state records, whether it is a CLEAN batch. */
  last?: { start: ScanPoint; records: JournalRecord[]; clean: boolean };
  /** What follows `end`: nothing, or a torn batch (why it was judged torn). */
  tail: { torn: false } | { torn: true; why: string };
}

type Head = 'end' | 'zero' | 'fill' | 'garbage' | 'record';

interface Stop {
  block: JournalBlock;
  pos: number;
  head: Head;
  bad: string;
  /** The block the chain continues in, when it was read (heads end, zero, fill). */
  next?: Buffer;
}

/** The chain value of a batch: checksum(previous chain, u32 LE || the batch's records as encoded). */
export function chainValue(previous: number, encoded: readonly Buffer[]): number {
  let value = chainStart(previous);
  for (const b of encoded) value = checksum(b, value);
  return value;
}

/** The chain computed incrementally: start from the previous chain, then `checksum(record, value)` per record. */
export function chainStart(previous: number): number {
  const prev = Buffer.alloc(4);
  prev.writeUInt32LE(previous >>> 0, 0);
  return checksum(prev);
}

/**
 * Replay the journal whose block 0 is in `firstSlot` and whose blocks carry `generation` (range
 * 0's label: a block of another generation, the leftover of an older journal, is never followed
 * and is damage where this journal's block belongs). Throws CORRUPT on damage.
 */
export async function scanJournal(read: ReadBlock, firstSlot: number, generation = 0): Promise<ScanResult> {
  const firstBuf = await read(firstSlot, 0);
  const h0 = blockHeader(firstBuf, 0, firstSlot);
  let block: JournalBlock = { index: 0, slot: firstSlot, buf: firstBuf, next: h0.next };
  if (h0.generation !== generation)
    throw damage(block, 0, `block 0 is of journal generation ${h0.generation}, the store's label says ${generation}`);
  if (h0.firstSeq !== 1) throw damage(block, 0, `block 0 starts at record ${h0.firstSeq}`);
  const slots = [firstSlot];
  const records: JournalRecord[] = [];
  let pos = BLOCK_HEADER;
  let expected = 1;
  let start: ScanPoint = { block, offset: pos, seq: 1, chain: 0 };
  let pending: JournalRecord[] = [];
  // The batch's chain value, folded in over its bytes as they are passed (block by block).
  let value = chainStart(0);
  let segment = pos;
  let last: ScanResult['last'];
  let batches = 0;
  let stop: Stop;
  for (;;) {
    const r = recordAt(block.buf, pos);
    if (!('bad' in r)) {
      if (r.seq !== expected) throw damage(block, pos, `record ${r.seq} is where record ${expected} belongs`);
      pos += r.size;
      expected += 1;
      if (r.record.type !== 'COMMIT') {
        pending.push(r.record);
        continue;
      }
      const c = r.record;
      const at = pos - r.size;
      if (c.firstSeq !== start.seq || c.count !== pending.length) {
        throw damage(
          block,
          at,
          `COMMIT ${r.seq} closes ${c.count} records from ${c.firstSeq}, the batch holds ${pending.length} from ${start.seq}`,
        );
      }
      if (at > segment) value = checksum(block.buf.subarray(segment, at), value);
      if (c.chain !== value) throw damage(block, at, `COMMIT ${r.seq}: chained checksum mismatch`);
      const clean = pending.length === 1 && pending[0]?.type === 'CLEAN';
      const state = pending.filter((x) => x.type !== 'CLEAN');
      for (const x of state) records.push(x);
      last = { start, records: state, clean };
      batches += 1;
      pending = [];
      value = chainStart(c.chain);
      segment = pos;
      start = { block, offset: pos, seq: expected, chain: c.chain };
      continue;
    }
    const head = headAt(block.buf, pos);
    if (head === 'end' || head === 'zero' || head === 'fill') {
      // This block's records may end here: the chain goes on if the next block starts with `expected`.
      const next = await read(block.next, block.index + 1);
      const nh = decodeBlockHeader(next);
      if (
        nh !== undefined &&
        nh.index === block.index + 1 &&
        nh.firstSeq === expected &&
        nh.generation === generation
      ) {
        if (!gapIntact(block.buf, pos)) throw damage(block, pos, 'the unused end of the block is damaged');
        checkHeaderPad(next, nh.index, block.next);
        if (pos > segment) value = checksum(block.buf.subarray(segment, pos), value);
        segment = BLOCK_HEADER;
        block = { index: nh.index, slot: block.next, buf: next, next: nh.next };
        slots.push(block.slot);
        pos = BLOCK_HEADER;
        continue;
      }
      stop = { block, pos, head, bad: r.bad, next };
    } else stop = { block, pos, head, bad: r.bad };
    break;
  }
  const result = { slots, records, batches, end: start, ...(last === undefined ? {} : { last }) };
  if (tailEmpty(stop, start)) return { ...result, tail: { torn: false } };
  const why = classify(stop, start, expected, generation);
  await noLaterBatch(read, stop, start, generation);
  return { ...result, tail: { torn: true, why } };
}

/** Nothing after P: the rest of P's block and the whole next block read as zeros. */
function tailEmpty(stop: Stop, start: ScanPoint): boolean {
  return (
    stop.block === start.block &&
    stop.pos === start.offset &&
    stop.next !== undefined &&
    allZero(stop.block.buf, stop.pos, stop.block.buf.length) &&
    allZero(stop.next, 0, stop.next.length)
  );
}

/** Rules 2a–2c at the stop point Q: why the tail is torn, or a CORRUPT error. */
function classify(stop: Stop, start: ScanPoint, expected: number, generation: number): string {
  const { block, pos } = stop;
  const buf = block.buf;
  // Pieces start at P in P's block; later blocks were written whole by the torn batch.
  const lo = block === start.block ? start.offset : 0;
  switch (stop.head) {
    case 'garbage':
      throw damage(block, pos, `unreadable bytes where record ${expected} belongs (${stop.bad})`);
    case 'record': {
      const type = buf.readUInt16LE(pos + 4);
      const len = buf.readUInt16LE(pos + 6);
      if (type === RecordType.COMMIT && len !== COMMIT_PAYLOAD) throw damage(block, pos, `a COMMIT of length ${len}`);
      const size = type === RecordType.COMMIT ? COMMIT_SIZE : pad8(RECORD_HEADER + len);
      if (pos + size > buf.length) throw damage(block, pos, `record ${expected} runs past its block`);
      const end = nextRecord(buf, pos + 8, pos + size) ?? pos + size;
      if (!zeroPiece(buf, lo, pos, end)) {
        throw damage(
          block,
          pos,
          `record ${expected} is unreadable (${stop.bad}) and none of its sectors reads as unwritten`,
        );
      }
      return `record ${expected} was not completely written`;
    }
    case 'zero':
      checkNext(stop, expected, true, generation);
      return `record ${expected} was not written`;
    default:
      checkNext(stop, expected, false, generation);
      return `the batch from record ${start.seq} went on in block ${block.index + 1}, which was not written`;
  }
}

/** Rule 2c: the next block's first sector reads as zeros, or its header fits the torn batch. */
function checkNext(stop: Stop, expected: number, later: boolean, generation: number): void {
  const next = stop.next as Buffer;
  if (allZero(next, 0, SECTOR)) return;
  const where = `block ${stop.block.index + 1} (store slot ${stop.block.next})`;
  const h = decodeBlockHeader(next);
  if (h === undefined) throw damage(stop.block, stop.pos, `the header of ${where} is damaged`);
  if (h.generation !== generation)
    throw damage(stop.block, stop.pos, `${where} is a block of journal generation ${h.generation}, not ${generation}`);
  if (h.index !== stop.block.index + 1 || h.firstSeq < expected || (h.firstSeq > expected && !later)) {
    throw damage(
      stop.block,
      stop.pos,
      `${where} is block ${h.index} from record ${h.firstSeq}; record ${expected} was expected`,
    );
  }
}

/** Rule 2d: no record after Q belongs to an earlier batch, no COMMIT to a later one. */
async function noLaterBatch(read: ReadBlock, stop: Stop, start: ScanPoint, generation: number): Promise<void> {
  const check = (buf: Buffer, from: number, index: number) => {
    for (let pos = from; pos + RECORD_HEADER <= buf.length; pos += 8) {
      if (buf.readUInt32LE(pos) !== RECORD_MAGIC) continue;
      const r = recordAt(buf, pos);
      if ('bad' in r) continue;
      if (r.seq < start.seq || (r.record.type === 'COMMIT' && r.record.firstSeq !== start.seq)) {
        throw damage(
          stop.block,
          stop.pos,
          `record ${start.seq} is unreadable, but record ${r.seq} (block ${index}, offset ${pos}) was committed after it`,
        );
      }
    }
  };
  check(stop.block.buf, stop.pos, stop.block.index);
  // Each block was zeroed durably before a header pointed to it: what it holds is this journal's.
  let index = stop.block.index + 1;
  let buf = stop.next ?? (await read(stop.block.next, index));
  for (;;) {
    check(buf, BLOCK_HEADER, index);
    const h = decodeBlockHeader(buf);
    if (h === undefined || h.index !== index || h.generation !== generation) return;
    index += 1;
    buf = await read(h.next, index);
  }
}

function blockHeader(buf: Buffer, index: number, slot: number): BlockHeader {
  const h = decodeBlockHeader(buf);
  if (h === undefined || h.index !== index) {
    throw new NbdsnapError(
      'CORRUPT',
      `difference store journal is damaged: block ${index} (store slot ${slot}) has a bad header`,
    );
  }
  checkHeaderPad(buf, index, slot);
  return h;
}

/** The header's last 4 bytes are not covered by its CRC: they must be zero. */
function checkHeaderPad(buf: Buffer, index: number, slot: number): void {
  if (!allZero(buf, 28, BLOCK_HEADER)) {
    throw new NbdsnapError(
      'CORRUPT',
      `difference store journal is damaged: block ${index} (store slot ${slot}) has a bad header`,
    );
  }
}

function recordAt(buf: Buffer, pos: number): ReturnType<typeof decodeRecord> {
  try {
    return decodeRecord(buf, pos);
  } catch {
    return { bad: 'undecodable payload' };
  }
}

/** What is at `pos` where no record decodes. Records are 8-aligned, so 8 bytes lie in one sector. */
function headAt(buf: Buffer, pos: number): Head {
  if (pos + 8 > buf.length) return 'end';
  if (allZero(buf, pos, pos + 8)) return 'zero';
  if (allByte(buf, pos, pos + 8, FILL)) return 'fill';
  return buf.readUInt32LE(pos) === RECORD_MAGIC && pos + RECORD_HEADER <= buf.length ? 'record' : 'garbage';
}

/** The first position in [from, to) where a record decodes (8-aligned). */
function nextRecord(buf: Buffer, from: number, to: number): number | undefined {
  for (let pos = from; pos < to && pos + RECORD_HEADER <= buf.length; pos += 8) {
    if (buf.readUInt32LE(pos) === RECORD_MAGIC && !('bad' in recordAt(buf, pos))) return pos;
  }
  return undefined;
}

/** Whether a piece (a sector cut to [lo, end of block)) overlapping [from, to) reads all zeros. */
function zeroPiece(buf: Buffer, lo: number, from: number, to: number): boolean {
  for (let s = from - (from % SECTOR); s < to; s += SECTOR) {
    const a = Math.max(s, lo);
    const b = Math.min(s + SECTOR, buf.length);
    if (a < b && allZero(buf, a, b)) return true;
  }
  return false;
}

/** The unused end of a block: each piece all filler (written) or all zeros (not written). */
function gapIntact(buf: Buffer, from: number): boolean {
  for (let a = from; a < buf.length; a = a - (a % SECTOR) + SECTOR) {
    const b = Math.min(a - (a % SECTOR) + SECTOR, buf.length);
    if (!allZero(buf, a, b) && !allByte(buf, a, b, FILL)) return false;
  }
  return true;
}

export function allZero(buf: Buffer, from: number, to: number): boolean {
  return allByte(buf, from, to, 0);
}

function allByte(buf: Buffer, from: number, to: number, value: number): boolean {
  for (let i = from; i < to; i++) if (buf[i] !== value) return false;
  return true;
}

const pad8 = (n: number): number => (n + 7) & ~7;

function damage(block: JournalBlock, offset: number, why: string): NbdsnapError {
  return new NbdsnapError(
    'CORRUPT',
    `difference store journal is damaged at block ${block.index} (store slot ${block.slot}), offset ${offset}: ${why}`,
  );
}
