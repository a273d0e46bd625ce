/**
 * The metadata journal: an append-only chain of blocks in store slots, holding the records of
 * records.ts. `append()` is a group commit: records queued while a batch is being committed go
 * together in the next batch. Callers wait until their batch is durable. An idle journal starts
 * its next batch one event-loop turn after the first record (`afterThisTurn`), not at once: the
 * records of everything the same turn started join it. A first write after a snapshot appends two
 * entries a few microtasks apart, its change-tracking CBT record, then its copy's EXCEPTION once
 * the old chunk is read; started at once, the batch took the CBT records of the first request
 * alone, and every write waited for two syncs in turn (measured at QD32: one lone CBT batch per
 * 32 first writes; see the head of scripts/first-write-bench.ts).
 *
 * Writing a batch: its records, then a COMMIT (first seq, count, and a chain value:
 * checksum(previous batch's chain || this batch's records as encoded)), then ONE `space.sync()`,
 * which fdatasyncs every store file: the chunk data the records point to and the records
 * together. Only then are the waiting writes let through. Batches are strictly serialised: batch
 * N+1 is written only after batch N's sync returned. So after a crash at most the last batch can
 * be unacknowledged, and only its data needs verifying at replay (`verifyLastBatch`: a `false`
 * answer drops the batch as torn; the store answers true and settles mismatching copies itself,
 * since a mismatch may also be damage after an acknowledged sync: see store.ts). A graceful stop (`close()`) writes a batch
 * holding one CLEAN record; after it the journal takes no more records.
 *
 * Blocks: each is one slot, header first (records.ts). The block after the current one is
 * allocated and zeroed when the current one is started; when a batch starts a new block, that
 * zeroing is made durable (a sync) before the new block's header, which points to it, is
 * written: the one exception to one sync per batch (once per block: ~1,300 copied chunks with
 * 64 KiB chunks). So every block a header points to holds zeros or this journal's records. The
 * unused end of a block the writer leaves for the next one is filled with 0xFF, so a completed
 * batch has no 512-byte sector that reads as zeros.
 *
 * Crash model: a sector (512 bytes) is written whole or not at all; the sectors written since the
 * last sync reach the disk in any subset. A batch torn by a crash therefore consists of sectors
 * written and sectors still zero, and nothing follows it. Replay (journal-scan.ts, whose header
 * comment states the exact rule) tells such a torn tail from damage: damage in a completed batch,
 * including the last one and its COMMIT, is a CORRUPT error and the server refuses to start; a
 * torn tail is dropped and zeroed. A read error (EIO, short read) is an error naming the block,
 * never the end of the journal: the end is recognised only from the content.
 *
 * Checkpoints (checkpoint-writer.ts, store.ts): a new journal of the next generation holding the
 * state is written beside this one; once range 0's label names it, `adopt()` continues there and
 * hands back this journal's slots for release. Every block header carries the generation, and
 * replay follows only blocks of the label's generation.
 */
import { errorMessage, NbdsnapError } from '../errors.ts';
import { copyWriteFailure, type SlotData, writeAndSync } from './copy-writes.ts';
import { type JournalOpenOptions, type JournalReport, replayJournal } from './journal-replay.ts';
import { chainValue, FILL, type ScanPoint } from './journal-scan.ts';
import { BLOCK_HEADER, encodeBlockHeader, encodeRecord, type JournalRecord } from './records.ts';
import type { StoreSpace } from './space.ts';

export type { JournalOpenOptions, JournalReport } from './journal-replay.ts';

/**
 * Resolves once the current turn of the event loop is over: after the callbacks of this poll
 * phase and their microtasks (setImmediate), so the records they append wait at most that long.
 */
function afterThisTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

interface Pending {
  records: JournalRecord[];
  /** Copies written with the batch, before its records (copy-writes.ts). */
  copies: readonly SlotData[];
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
  private chain: number;
  private queue: Pending[] = [];
  private committing: Promise<void> | undefined;
  /** Why the journal takes no more records: closed, read-only, or a batch that failed. */
  private refusal: NbdsnapError | undefined;
  /** Slots holding journal blocks (released only when a checkpoint replaces the journal). */
  readonly slots: number[];
  /** The generation every block of this journal carries. */
  private gen: number;

  /** The sequence number the next record will take. */
  get nextSeq(): number {
    return this.seq;
  }

  private constructor(space: StoreSpace, at: ScanPoint, slots: number[], generation: number) {
    this.space = space;
    this.gen = generation;
    this.block = at.block.buf;
    this.blockSlot = at.block.slot;
    this.blockIndex = at.block.index;
    this.nextSlot = at.block.next;
    this.tail = at.offset;
    this.seq = at.seq;
    this.chain = at.chain;
    this.slots = slots;
  }

  /** Start a journal in a blank store (durably); its first block is `journal.slots[0]`. */
  static async create(space: StoreSpace): Promise<Journal> {
    const first = space.allocate();
    const next = space.allocate();
    if (first === undefined || next === undefined)
      throw new NbdsnapError('BAD_ARGUMENT', 'store too small for its journal');
    const buf = Buffer.alloc(space.chunkSize);
    encodeBlockHeader({ index: 0, next, firstSeq: 1 }).copy(buf, 0);
    await space.writeSlot(first, buf);
    await space.writeSlot(next, Buffer.alloc(space.chunkSize)); // nothing stale where the chain goes next
    await space.sync();
    const at = { block: { index: 0, slot: first, buf, next }, offset: BLOCK_HEADER, seq: 1, chain: 0 };
    return new Journal(space, at, [first, next], 0);
  }

  /**
   * Replay the journal starting at `firstSlot`, claiming its slots in `space`. Returns the state
   * records of every whole batch (no COMMIT or CLEAN records). Throws CORRUPT on damage, EIO
   * when a block cannot be read. `readOnly`: write nothing (store check).
   */
  static async open(
    space: StoreSpace,
    firstSlot: number,
    opts: JournalOpenOptions = {},
  ): Promise<{ journal: Journal; records: JournalRecord[]; report: JournalReport }> {
    const { end, slots, records, report } = await replayJournal(space, firstSlot, opts);
    const journal = new Journal(space, end, slots, report.generation);
    if (opts.readOnly === true) journal.refusal = new NbdsnapError('EPERM', 'the journal was opened read-only');
    return { journal, records, report };
  }

  get generation(): number {
    return this.gen;
  }

  /** No batch being written and none queued (a checkpoint may replace the journal). */
  get idle(): boolean {
    return this.committing === undefined && this.queue.length === 0;
  }

  /** Why the journal takes no records (closed, read-only, failed), if it does not. */
  get refused(): NbdsnapError | undefined {
    return this.refusal;
  }

  /**
   * Continue in another journal (a checkpoint's, once range 0's label names it): from `at`, its
   * blocks in `slots`, under `generation`. Returns the slots of the journal replaced (the caller
   * releases them). Only while idle.
   */
  adopt(at: ScanPoint, slots: number[], generation: number): number[] {
    if (!this.idle) throw new NbdsnapError('EINVAL', 'the journal is busy: it cannot be replaced now');
    this.block = at.block.buf;
    this.blockSlot = at.block.slot;
    this.blockIndex = at.block.index;
    this.nextSlot = at.block.next;
    this.tail = at.offset;
    this.seq = at.seq;
    this.chain = at.chain;
    this.gen = generation;
    return this.slots.splice(0, this.slots.length, ...slots);
  }

  /**
   * Stop taking records for good (a checkpoint whose label write failed: which journal the next
   * start reads is unknown, both describe the same state).
   */
  fail(why: string): void {
    this.refusal = new NbdsnapError('EIO', `the journal failed earlier: ${why}`);
  }

  /**
   * Append records durably (group commit). Resolves once they and the data before them are on
   * disk. `copies` (whole slots, on the store's one local file: `space.commitTarget`) are written
   * with the batch, before its records, in the same hand-off as its sync (copy-writes.ts); if one
   * fails, these records are left out and the promise rejects with a copy-write failure.
   */
  append(records: JournalRecord[], copies: readonly SlotData[] = []): Promise<void> {
    if (this.refusal !== undefined) return Promise.reject(this.refusal);
    return new Promise((resolve, reject) => {
      this.queue.push({ records, copies, resolve, reject });
      if (this.committing === undefined) this.committing = afterThisTurn().then(() => this.commitLoop());
    });
  }

  /**
   * A graceful stop: once the batches queued are durable, write a CLEAN batch. The journal takes
   * no more records after. Writes nothing if a batch failed (what follows a failure is unknown),
   * or if the journal was opened read-only or closed already. Resolves true once CLEAN is durable.
   */
  async close(): Promise<boolean> {
    if (this.refusal !== undefined) return false;
    this.refusal = new NbdsnapError('ESHUTDOWN', 'the difference store is closed');
    await this.committing;
    if (this.refusal.code !== 'ESHUTDOWN') return false;
    await this.commit([{ type: 'CLEAN', at: Date.now() }]);
    return true;
  }

  private async commitLoop(): Promise<void> {
    while (this.queue.length > 0) {
      let batch = this.queue;
      this.queue = [];
      try {
        if (this.refusal !== undefined && this.refusal.code !== 'ESHUTDOWN') throw this.refusal;
        // One batch at a time: the next is written only after this one's sync returned.
        batch = await this.commitBatch(batch);
        for (const p of batch) p.resolve();
      } catch (err) {
        for (const p of batch) p.reject(err);
      }
    }
    this.committing = undefined;
  }

  /**
   * Commit `batch` with its copies; returns the entries committed. An entry whose copy failed is
   * rejected here and left out (its records are never written), and the rest go again.
   */
  private async commitBatch(batch: Pending[]): Promise<Pending[]> {
    let rest = batch;
    for (;;) {
      const copies = rest.flatMap((p) => p.copies);
      if (copies.length === 0) {
        if (rest.length > 0) await this.commit(rest.flatMap((p) => p.records));
        return rest;
      }
      const { failed, done } = await this.commitWithCopies(rest, copies);
      rest = failed.size === 0 ? rest : rest.filter((p) => !failed.has(p));
      if (done) return rest;
    }
  }

  /**
   * The copies of `batch`, its records and the sync in one job (copy-writes.ts), when the records
   * fit in the current block and everything is on one file; otherwise the copies first, then the
   * batch as usual. Returns the entries whose copy failed (rejected), and whether the others are
   * committed (`done`) or must go again. A failure of the records or the sync stops the journal
   * for good.
   */
  private async commitWithCopies(
    batch: Pending[],
    copies: SlotData[],
  ): Promise<{ failed: Set<Pending>; done: boolean }> {
    const failed = new Set<Pending>();
    const fail = (p: Pending, err: unknown) => {
      if (!failed.has(p)) p.reject(copyWriteFailure(err));
      failed.add(p);
    };
    const target = this.space.commitTarget([...copies.map((c) => c.slot), this.blockSlot]);
    const { encoded, chain } = this.encode(batch.flatMap((p) => p.records));
    const size = encoded.reduce((n, b) => n + b.length, 0);
    if (target === undefined || this.tail + size > this.block.length) {
      // Rare (a new journal block, a store on several files or an export): copies, then records.
      for (const p of batch) {
        const written = await Promise.allSettled(p.copies.map((c) => this.space.writeSlot(c.slot, c.data)));
        for (const r of written) if (r.status === 'rejected') fail(p, r.reason);
      }
      const ok = batch.filter((p) => !failed.has(p));
      if (ok.length > 0) await this.commit(ok.flatMap((p) => p.records));
      return { failed, done: true };
    }
    const start = this.tail;
    for (const bytes of encoded) {
      bytes.copy(this.block, this.tail);
      this.tail += bytes.length;
    }
    let outcome: Awaited<ReturnType<typeof writeAndSync>>;
    try {
      const bytes = this.block.subarray(start, this.tail);
      outcome = await writeAndSync(this.space, target, copies, {
        offset: this.space.slotOffset(this.blockSlot) + start,
        bytes,
      });
    } catch (err) {
      outcome = { copies: [], failure: err as Error };
    }
    if (outcome.failure !== undefined) {
      this.refusal = new NbdsnapError('EIO', `the journal failed earlier: ${errorMessage(outcome.failure)}`);
      throw outcome.failure;
    }
    let k = 0;
    for (const p of batch) {
      for (let i = 0; i < p.copies.length; i++, k++) {
        const err = outcome.copies[k];
        if (err !== undefined && err !== 'retry') fail(p, err);
      }
    }
    if (failed.size > 0) {
      this.tail = start; // nothing of the records was written: the batch goes again without them
      return { failed, done: false };
    }
    this.seq += encoded.length;
    this.chain = chain;
    return { failed, done: true };
  }

  /** A batch's records, numbered from the next seq, and its COMMIT; the chain value after it. */
  private encode(records: JournalRecord[]): { encoded: Buffer[]; chain: number } {
    const encoded = records.map((r, i) => encodeRecord(r, this.seq + i));
    const chain = chainValue(this.chain, encoded);
    encoded.push(
      encodeRecord({ type: 'COMMIT', firstSeq: this.seq, count: records.length, chain }, this.seq + records.length),
    );
    return { encoded, chain };
  }

  /** Write one batch and its COMMIT, then sync once. A failure stops the journal for good. */
  private async commit(records: JournalRecord[]): Promise<void> {
    try {
      const { encoded, chain } = this.encode(records);
      const room = this.block.length - BLOCK_HEADER;
      const big = encoded.find((b) => b.length > room);
      if (big !== undefined)
        throw new NbdsnapError('EINVAL', `a journal record of ${big.length} bytes exceeds a block`);
      await this.write(encoded);
      await this.space.sync(); // the data written before and the records, together
      this.chain = chain;
    } catch (err) {
      this.refusal = new NbdsnapError('EIO', `the journal failed earlier: ${errorMessage(err)}`);
      throw err;
    }
  }

  private async write(encoded: Buffer[]): Promise<void> {
    let start = this.tail;
    for (const bytes of encoded) {
      if (this.tail + bytes.length > this.block.length) {
        this.block.fill(FILL, this.tail); // the writer moved on from here
        await this.space.writeSlotSync(this.blockSlot, this.block.subarray(start), start);
        await this.startNextBlock();
        start = 0;
      }
      bytes.copy(this.block, this.tail);
      this.tail += bytes.length;
      this.seq += 1;
    }
    // On this thread: a batch's records are small (space.ts, writeSlotSync).
    // (A range on an NBD export returns a promise instead.)
    if (this.tail > start) await this.space.writeSlotSync(this.blockSlot, this.block.subarray(start, this.tail), start);
  }

  /** Move to the (zeroed) next block; allocate and zero the one after it, durably, first. */
  private async startNextBlock(): Promise<void> {
    const next = this.space.allocate();
    if (next === undefined) throw new NbdsnapError('ENOSPC', 'difference store has no room left for its journal');
    this.slots.push(next);
    await this.space.writeSlot(next, Buffer.alloc(this.space.chunkSize));
    await this.space.sync(); // zeros on disk before the header that points to them is written
    this.blockSlot = this.nextSlot;
    this.blockIndex += 1;
    this.nextSlot = next;
    this.block = Buffer.alloc(this.space.chunkSize);
    encodeBlockHeader({ index: this.blockIndex, next, firstSeq: this.seq, generation: this.gen }).copy(this.block, 0);
    this.tail = BLOCK_HEADER;
  }
}
