/**
 * Replay of the metadata journal (journal.ts) at open: the chain of blocks read with one block of
 * read-ahead and scanned (journal-scan.ts), the last batch's data checked after a crash, a torn
 * tail zeroed (unless read-only), and the report `store check` prints. Journal.open continues
 * writing where this ends.
 */
import { errorMessage, NbdsnapError } from '../errors.ts';
import { type ReadBlock, type ScanPoint, scanJournal } from './journal-scan.ts';
import { decodeBlockHeader, type JournalRecord } from './records.ts';
import type { StoreSpace } from './space.ts';

export interface JournalOpenOptions {
  /**
   * Checks the chunk data of the last batch (after a crash only): false means that data is not
   * what the records say, so the batch's sync never completed and it is dropped as torn. `batch`:
   * its state records; `before`: the state records of every batch before it (device sizes, what
   * is still in use: see verify.ts).
   */
  verifyLastBatch?: (batch: JournalRecord[], before: JournalRecord[]) => Promise<boolean>;
  /** Write nothing (no zeroing of a torn tail): for an offline check. The journal takes no records. */
  readOnly?: boolean;
  /** The journal's generation (range 0's label `journalGeneration`; 0 when absent). */
  generation?: number;
}

/** What replay found (for `store check`); damage is never reported here: it is a CORRUPT error. */
export interface JournalReport {
  /** Journal blocks kept: the chain up to the end, and the zeroed block it continues in. */
  blocks: number;
  slots: number[];
  /** The journal's generation (range 0's label); it starts with a CHECKPOINT record. */
  generation: number;
  checkpoint: boolean;
  /** Whole batches replayed (a CLEAN batch included) and the state records they hold. */
  batches: number;
  records: number;
  /** The last whole batch is a CLEAN one and nothing follows it. */
  cleanStop: boolean;
  /** clean: after a graceful stop; torn: a torn batch was dropped; end: a crash between batches. */
  reason: 'clean' | 'torn' | 'end';
  /** Where the journal ends: the next batch goes there. */
  stop: { block: number; slot: number; offset: number; seq: number };
  /** Why the dropped tail was judged torn (reason 'torn'). */
  torn?: string;
}

/**
 * Replay the journal starting at `firstSlot`, claiming its slots in `space`. Returns where it
 * ends, its slots, the state records of every whole batch (no COMMIT or CLEAN records) and the
 * report. Throws CORRUPT on damage, EIO when a block cannot be read. `readOnly`: write nothing.
 */
export async function replayJournal(
  space: StoreSpace,
  firstSlot: number,
  opts: JournalOpenOptions,
): Promise<{ end: ScanPoint; slots: number[]; records: JournalRecord[]; report: JournalReport }> {
  const readOne = async (slot: number, index: number): Promise<Buffer> => {
    if (!Number.isInteger(slot) || slot < 0 || slot >= space.totalSlots) {
      throw new NbdsnapError('CORRUPT', `journal block ${index} would be in store slot ${slot}, beyond the store`);
    }
    try {
      return await space.readSlot(slot, space.chunkSize);
    } catch (err) {
      throw new NbdsnapError('EIO', `cannot read journal block ${index} (store slot ${slot}): ${errorMessage(err)}`, {
        cause: err,
      });
    }
  };
  // Read ahead: while a block is decoded, the one its header points to is being read.
  let ahead: { slot: number; index: number; buf: Promise<Buffer> } | undefined;
  const read: ReadBlock = async (slot, index) => {
    const got = ahead !== undefined && ahead.slot === slot && ahead.index === index ? ahead.buf : readOne(slot, index);
    ahead = undefined;
    const buf = await got;
    const h = decodeBlockHeader(buf);
    if (h !== undefined && h.index === index && Number.isInteger(h.next) && h.next < space.totalSlots) {
      ahead = { slot: h.next, index: index + 1, buf: readOne(h.next, index + 1) };
      ahead.buf.catch(() => {}); // reported when (if) it is asked for
    }
    return buf;
  };
  const generation = opts.generation ?? 0;
  const scan = await scanJournal(read, firstSlot, generation);
  let { end, records, batches } = scan;
  let torn = scan.tail.torn ? scan.tail.why : undefined;
  const cleanStop = !scan.tail.torn && scan.last?.clean === true;
  const last = scan.last;
  // Only when nothing follows the last batch may its sync have been cut short (a later batch's
  // bytes would mean it returned: batches are serialised).
  if (torn === undefined && !cleanStop && last !== undefined && opts.verifyLastBatch !== undefined) {
    const before = records.slice(0, records.length - last.records.length);
    if (!(await opts.verifyLastBatch(last.records, before))) {
      torn = `the data of the last batch (records from ${last.start.seq}) is not what it records`;
      end = last.start;
      records = before;
      batches -= 1;
    }
  }
  const slots = [...scan.slots.slice(0, end.block.index + 1), end.block.next];
  for (const slot of slots) space.claim(slot);
  if (torn !== undefined && opts.readOnly !== true) {
    // Forget whatever an unfinished batch left after the end, so it cannot be misread later.
    const buf = end.block.buf;
    buf.fill(0, end.offset);
    await space.writeSlot(end.block.slot, buf.subarray(end.offset), end.offset);
    await space.writeSlot(end.block.next, Buffer.alloc(space.chunkSize));
    await space.sync();
  }
  const report: JournalReport = {
    blocks: slots.length,
    slots,
    generation,
    checkpoint: records[0]?.type === 'CHECKPOINT',
    batches,
    records: records.length,
    cleanStop,
    reason: cleanStop ? 'clean' : torn !== undefined ? 'torn' : 'end',
    stop: { block: end.block.index, slot: end.block.slot, offset: end.offset, seq: end.seq },
    ...(torn === undefined ? {} : { torn }),
  };
  return { end, slots, records, report };
}
