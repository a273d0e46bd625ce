/**
 * The metadata journal: an append-only chain of blocks in store slots, holding the records of
 * records.ts. `append()` is a group commit: records queued while a commit runs go together in
 * the next one. Each commit first makes the store's *data* durable (the chunk copies the new
 * records point to), then writes the records and makes them durable, so a mapping is never on
 * disk before its data (dm-snap's "data first, then metadata"). Callers wait for the commit.
 *
 * Replay (`Journal.open`) walks the chain and yields every record up to the end. A record that is
 * not the expected next one ends the journal (a torn tail after a crash); but if a valid record
 * with a later sequence number follows it, the journal was damaged in the middle, and opening
 * fails with a CORRUPT error rather than silently dropping acknowledged metadata.
 */
import { NbdsnapError } from '../errors.ts';
import {
  BLOCK_HEADER,
  type BlockHeader,
  decodeBlockHeader,
  decodeRecord,
  encodeBlockHeader,
  encodeRecord,
  type JournalRecord,
} from './records.ts';
import type { StoreSpace } from './space.ts';

interface Pending {
  records: JournalRecord[];
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class Journal {
  private readonly space: StoreSpace;
  private block: Buffer;
  private blockSlot: number;
  private blockIndex: number;
  private nextSlot: number;
  private tail: number;
  private seq: number;
  private queue: Pending[] = [];
  private committing = false;
  /** Slots holding journal blocks (never reused). */
  readonly slots: number[];

  private constructor(
    space: StoreSpace,
    state: { block: Buffer; slot: number; index: number; next: number; tail: number; seq: number; slots: number[] },
  ) {
    this.space = space;
    this.block = state.block;
    this.blockSlot = state.slot;
    this.blockIndex = state.index;
    this.nextSlot = state.next;
    this.tail = state.tail;
    this.seq = state.seq;
    this.slots = state.slots;
  }

  /** Start a journal in a blank store; returns it and the slot of its first block. */
  static async create(space: StoreSpace): Promise<Journal> {
    const first = space.allocate();
    const next = space.allocate();
    if (first === undefined || next === undefined)
      throw new NbdsnapError('BAD_ARGUMENT', 'store too small for its journal');
    const block = Buffer.alloc(space.chunkSize);
    encodeBlockHeader({ index: 0, next, firstSeq: 1 }).copy(block, 0);
    await space.writeSlot(first, block);
    await space.writeSlot(next, Buffer.alloc(space.chunkSize)); // nothing stale where the chain goes next
    return new Journal(space, { block, slot: first, index: 0, next, tail: BLOCK_HEADER, seq: 1, slots: [first, next] });
  }

  /**
   * Replay the journal starting at `firstSlot`, claiming its slots in `space`. `readOnly`: write
   * nothing (store check). `verifyLastBatch(batch, before)`: whether the data of the last batch
   * matches its checksums, for the one-sync commit. Not called while data is made durable before
   * its records (a mismatch can then only be damage, which the reads of the copies find).
   */
  static async open(
    space: StoreSpace,
    firstSlot: number,
    opts: {
      readOnly?: boolean;
      verifyLastBatch?: (batch: JournalRecord[], before: JournalRecord[]) => Promise<boolean>;
    } = {},
  ): Promise<{ journal: Journal; records: JournalRecord[] }> {
    const records: JournalRecord[] = [];
    const slots = [firstSlot];
    let block = await readBlock(space, firstSlot, 0);
    let header = block.header;
    let slot = firstSlot;
    let pos = BLOCK_HEADER;
    let expected = 1;
    // The last point where a whole batch ended: the journal resumes there.
    let end = { slot, index: 0, next: header.next, pos, seq: 1, buf: block.buf, slots: 1 };
    let batch: JournalRecord[] = [];
    space.claim(slot);
    space.claim(header.next);
    for (;;) {
      const r = decodeRecord(block.buf, pos);
      if ('bad' in r || r.seq !== expected) {
        // Not a record here: the chain goes on in the next block, or the journal ends.
        const next = await readBlock(space, header.next, header.index + 1).catch(() => undefined);
        if (next === undefined || next.header.firstSeq !== expected) break;
        slot = header.next;
        slots.push(slot);
        block = next;
        header = next.header;
        space.claim(header.next);
        pos = BLOCK_HEADER;
        continue;
      }
      pos += r.size;
      expected += 1;
      if (r.record.type !== 'COMMIT') {
        batch.push(r.record);
        continue;
      }
      if (r.record.firstSeq + r.record.count !== r.seq || r.record.count !== batch.length) break;
      records.push(...batch);
      batch = [];
      end = { slot, index: header.index, next: header.next, pos, seq: expected, buf: block.buf, slots: slots.length };
    }
    await assertTornTail(space, end.buf, end.pos, end.next, end.seq);
    const kept = slots.slice(0, end.slots);
    kept.push(end.next);
    // Forget whatever an unfinished batch left after the end, so it cannot be misread later.
    end.buf.fill(0, end.pos);
    if (opts.readOnly !== true) {
      await space.writeSlot(end.slot, end.buf.subarray(end.pos), end.pos);
      await space.writeSlot(end.next, Buffer.alloc(space.chunkSize));
    }
    const journal = new Journal(space, {
      block: end.buf,
      slot: end.slot,
      index: end.index,
      next: end.next,
      tail: end.pos,
      seq: end.seq,
      slots: kept,
    });
    return { journal, records };
  }

  /** Append records durably (group commit). Resolves once they and the data before them are on disk. */
  append(records: JournalRecord[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ records, resolve, reject });
      if (!this.committing) void this.commitLoop();
    });
  }

  private async commitLoop(): Promise<void> {
    this.committing = true;
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      try {
        await this.space.sync(); // the data the records point to, first
        const records = batch.flatMap((p) => p.records);
        records.push({ type: 'COMMIT', firstSeq: this.seq, count: records.length });
        await this.write(records);
        await this.space.sync();
        for (const p of batch) p.resolve();
      } catch (err) {
        for (const p of batch) p.reject(err);
      }
    }
    this.committing = false;
  }

  private async write(records: JournalRecord[]): Promise<void> {
    let start = this.tail;
    for (const rec of records) {
      const bytes = encodeRecord(rec, this.seq);
      if (this.tail + bytes.length > this.block.length) {
        await this.space.writeSlot(this.blockSlot, this.block.subarray(start, this.tail), start);
        await this.startNextBlock();
        start = 0;
      }
      bytes.copy(this.block, this.tail);
      this.tail += bytes.length;
      this.seq += 1;
    }
    await this.space.writeSlot(this.blockSlot, this.block.subarray(start, this.tail), start);
  }

  private async startNextBlock(): Promise<void> {
    const next = this.space.allocate();
    if (next === undefined) throw new NbdsnapError('ENOSPC', 'difference store has no room left for its journal');
    await this.space.writeSlot(next, Buffer.alloc(this.space.chunkSize));
    this.slots.push(next);
    this.blockSlot = this.nextSlot;
    this.blockIndex += 1;
    this.nextSlot = next;
    this.block = Buffer.alloc(this.space.chunkSize);
    encodeBlockHeader({ index: this.blockIndex, next, firstSeq: this.seq }).copy(this.block, 0);
    this.tail = BLOCK_HEADER;
  }
}

async function readBlock(
  space: StoreSpace,
  slot: number,
  index: number,
): Promise<{ buf: Buffer; header: BlockHeader }> {
  const buf = await space.readSlot(slot, space.chunkSize);
  const header = decodeBlockHeader(buf);
  if (header === undefined || header.index !== index) {
    throw new NbdsnapError('CORRUPT', `journal block ${index} (store slot ${slot}) has a bad header`);
  }
  return { buf, header };
}

/**
 * Where replay stopped, only an unfinished batch may follow (a crash tore it). A COMMIT for a
 * *later* batch after that point means acknowledged metadata is unreadable: the store is damaged.
 */
async function assertTornTail(space: StoreSpace, buf: Buffer, from: number, nextSlot: number, seq: number) {
  const later = (b: Buffer, start: number): number | undefined => {
    for (let pos = start; pos + 20 <= b.length; pos += 8) {
      const r = decodeRecord(b, pos);
      if (!('bad' in r) && r.record.type === 'COMMIT' && r.record.firstSeq > seq) return r.seq;
    }
    return undefined;
  };
  let found = later(buf, from);
  if (found === undefined) {
    // The next block was zeroed before the chain pointed to it, so a committed record in it is
    // this journal's, even when the block's header is damaged (replay could not follow it).
    const next = await space.readSlot(nextSlot, space.chunkSize);
    found = later(next, BLOCK_HEADER);
  }
  if (found !== undefined) {
    throw new NbdsnapError(
      'CORRUPT',
      `difference store journal is damaged: record ${seq} is unreadable but record ${found} was committed after it`,
    );
  }
}
