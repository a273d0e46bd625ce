/**
 * Writing a checkpoint: a whole new journal that starts with the state instead of the history
 * (LevelDB's new MANIFEST, which starts with a snapshot of the current version). The caller
 * (store.ts) then switches range 0's label to it (`firstJournalSlot`, `journalGeneration`), the
 * one atomic step, and only then releases the old journal's slots.
 *
 * The new journal is an ordinary one of the next generation: blocks chained from slot
 * `slots[0]`, records from seq 1, batches each closed by its COMMIT with the chain from 0, so
 * replay (journal-scan.ts) reads it like any other. It is written into free slots that nothing
 * points to until the label does, so it needs neither the per-block zero-then-header sync nor a
 * sync per batch: every block is written whole once (header, records, filler tail), then the last
 * block (zeros after its records: the journal continues there) and a zeroed next block, then ONE
 * sync. A crash before the label write leaves the old journal authoritative (these slots are free
 * at the next start); after it, the new one. Memory stays one block and one record at a time:
 * the chain is computed incrementally (`checksum(record, value)`), records come from an iterator.
 */
import { NbdsnapError } from '../errors.ts';
import { checksum } from './checksum.ts';
import { chainStart, FILL, type ScanPoint } from './journal-scan.ts';
import { killPoint } from './kill-point.ts';
import { BLOCK_HEADER, encodeBlockHeader, encodeRecordInto, type JournalRecord } from './records.ts';
import type { StoreSpace } from './space.ts';

/** Records per batch of a checkpoint (each batch closed by a COMMIT). */
const BATCH_RECORDS = 4096;

export interface WrittenCheckpoint {
  /** Where the new journal continues (after its last batch). */
  at: ScanPoint;
  /** Its blocks' slots, by index, and the zeroed block it continues in. */
  slots: number[];
  /** State records written (no COMMIT). */
  records: number;
  /** Bytes of the new journal: blocks times chunk size. */
  bytes: number;
}

/**
 * Write `records` as a new journal of `generation` into free slots, durably (one sync). Keeps
 * `reserve` slots free (the running journal's and the data's reserve): a store too full for the
 * checkpoint is an ENOSPC error. On any failure the slots taken are released and the error
 * thrown; nothing refers to them.
 */
export async function writeCheckpoint(
  space: StoreSpace,
  records: Iterable<JournalRecord>,
  generation: number,
  reserve: number,
): Promise<WrittenCheckpoint> {
  const size = space.chunkSize;
  const slots: number[] = [];
  const take = (): number => {
    const slot = space.free > reserve ? space.allocate() : undefined;
    if (slot === undefined) throw new NbdsnapError('ENOSPC', 'the difference store has no room for a checkpoint');
    slots.push(slot);
    return slot;
  };
  try {
    let index = 0;
    let slot = take();
    let next = take();
    const block = Buffer.alloc(size);
    let tail = BLOCK_HEADER;
    let seq = 1;
    const startBlock = () => {
      encodeBlockHeader({ index, next, firstSeq: seq, generation }).copy(block, 0);
      tail = BLOCK_HEADER;
    };
    startBlock();
    /** Encode `rec` into the block (the next one when it does not fit); returns its bytes there. */
    const put = async (rec: JournalRecord): Promise<Buffer> => {
      let n = encodeRecordInto(block, tail, rec, seq);
      if (n === 0) {
        block.fill(FILL, tail); // the writer moved on from here
        await space.writeSlot(slot, block);
        slot = next;
        next = take();
        index += 1;
        block.fill(0);
        startBlock();
        n = encodeRecordInto(block, tail, rec, seq);
        if (n === 0) throw new NbdsnapError('EINVAL', `a journal record (${rec.type}) exceeds a block`);
      }
      const bytes = block.subarray(tail, tail + n);
      tail += n;
      seq += 1;
      return bytes;
    };
    let chain = 0;
    let batchFirst = 1;
    let batchCount = 0;
    let value = chainStart(chain);
    let count = 0;
    const close = async (): Promise<void> => {
      await put({ type: 'COMMIT', firstSeq: batchFirst, count: batchCount, chain: value });
      chain = value;
      value = chainStart(chain);
      batchFirst = seq;
      batchCount = 0;
    };
    for (const rec of records) {
      value = checksum(await put(rec), value);
      batchCount += 1;
      count += 1;
      if (batchCount >= BATCH_RECORDS) await close();
    }
    if (batchCount > 0) await close();
    // Last, an empty batch (a COMMIT alone): after a crash right after the checkpoint, replay
    // verifies the data of the last batch only, and none of this data is new.
    await close();
    await space.writeSlot(slot, block); // zeros after the records: the journal goes on here
    await space.writeSlot(next, Buffer.alloc(size));
    await space.sync();
    killPoint('checkpoint:blocks-written');
    return {
      at: { block: { index, slot, buf: block, next }, offset: tail, seq, chain },
      slots,
      records: count,
      bytes: slots.length * size,
    };
  } catch (err) {
    for (const s of slots) space.release(s);
    throw err;
  }
}
