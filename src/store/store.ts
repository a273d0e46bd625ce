/**
 * The difference store: space (ranges cut into slots) plus its metadata journal, opened or
 * formatted from the `--store` ranges. Snapshot code sees slots and `commit(records)`; it does
 * not see labels or journal blocks.
 *
 * Every range carries a label (label.ts); range 0's label is the store's record (superblock.ts).
 * Which store the given ranges are is decided by open.ts from their labels, before anything is
 * written; only ranges that read as all zeros are formatted without `nbdsnap store format`.
 *
 * - Persistent (default): range 0's record lists the chunk size and every range, so ranges
 *   appended at run time come back on restart; the journal records snapshots and chunk mappings;
 *   `commit()` returns once data and records are durable.
 * - Transient (`--transient`): the ranges are labelled (kind 'transient'), but the mapping lives
 *   in memory only and is gone at exit (blksnap's model); `commit()` returns at once.
 *
 * Low free space (below `lowSpaceSlots`) and exhaustion are reported through `onSpace`.
 */
import { errorMessage, NbdsnapError } from '../errors.ts';
import { copyWriteFailure, isCopyWriteFailure, type SlotData } from './copy-writes.ts';
import { type WrittenCheckpoint, writeCheckpoint } from './checkpoint-writer.ts';
import { Journal, type JournalReport } from './journal.ts';
import { KILL_ENV, killPoint } from './kill-point.ts';
import { encodeLabelPair, type StoreKind } from './label.ts';
import { planCheck, planOpen, planTransient } from './open.ts';
import { probeRange } from './probe.ts';
import type { JournalRecord } from './records.ts';
import { SlotWriter } from './slot-writer.ts';
import type { StoreRange, StoreSpace } from './space.ts';
import { checkCleanStop, openSpace, probeOwned, StoreRecord } from './store-record.ts';
import { newSuperblock, rangeLabel, type Superblock } from './superblock.ts';
import { chunkLengths, type DataRecord, mismatchedData } from './verify.ts';

/** Slots kept back from data so the journal can always record an invalidation. */
const JOURNAL_RESERVE = 2;
export const DEFAULT_CHUNK_SIZE = 64 * 1024;

export function checkChunkSize(n: number): void {
  if (n < 4096 || n > 1024 * 1024 || (n & (n - 1)) !== 0) {
    throw new NbdsnapError('BAD_ARGUMENT', `--chunk-size ${n} must be a power of two from 4K to 1M`);
  }
}

export interface StoreOptions {
  chunkSize?: number | undefined;
  transient: boolean;
  /** Open an existing store without writing anything (store check); never formats or appends. */
  readOnly?: boolean;
}

export interface StoreStatus {
  chunkSize: number;
  transient: boolean;
  totalBytes: number;
  usedBytes: number;
  freeBytes: number;
  journalBytes: number;
  ranges: (StoreRange & { slots: number })[];
}

export class DiffStore {
  readonly space: StoreSpace;
  readonly transient: boolean;
  /** Whole-slot writes, coalesced (slot-writer.ts). */
  private readonly writer: SlotWriter;
  private readonly journal: Journal | undefined;
  /** Range 0's label: the store's record (store-record.ts). */
  private readonly label: StoreRecord;
  private readonly slotsPerRange: number[] = [];
  private failedReason: string | undefined;
  private closing = false;
  /** TEST ONLY: a kill point between copies and their records is set (copies go out first). */
  private readonly killBetween = process.env[KILL_ENV]?.startsWith('copy:slots-written') === true;
  /** Slots of journals replaced by checkpoints (only for the test kill point `checkpoint:old-reused`). */
  private replaced: number[] = [];

  private constructor(space: StoreSpace, journal: Journal | undefined, record: Superblock, slots: number[]) {
    this.space = space;
    this.writer = new SlotWriter(space);
    this.journal = journal;
    this.label = new StoreRecord(space, record);
    this.transient = record.kind === 'transient';
    this.slotsPerRange.push(...slots);
  }

  get chunkSize(): number {
    return this.space.chunkSize;
  }

  /** The store's identity (the uuid in every range's label). */
  get uuid(): string {
    return this.label.current.uuid;
  }

  /**
   * Open the store on `ranges` (range 0 first) by the open rules of open.ts, formatting it only
   * if every range is blank. Returns the replayed records and what the journal's replay found.
   * `readOnly` (store check): an existing store only, files opened for reading under a shared
   * claim, and nothing written (no format, no append, no path re-recorded, no journal repair).
   */
  static async open(
    ranges: StoreRange[],
    opts: StoreOptions,
  ): Promise<{ store: DiffStore; records: JournalRecord[]; report?: JournalReport; suspect?: DataRecord[] }> {
    if (ranges.length === 0) throw new NbdsnapError('BAD_ARGUMENT', 'no store range given');
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const readOnly = opts.readOnly === true;
    if (opts.transient && !readOnly) {
      const given = await planTransient(ranges, probeOwned);
      return { store: await DiffStore.create(given, chunkSize, 'transient'), records: [] };
    }
    const plan = readOnly ? await planCheck(ranges, probeRange) : await planOpen(ranges, probeOwned);
    if (plan.kind === 'new')
      return { store: await DiffStore.create(plan.ranges, chunkSize, 'persistent'), records: [] };
    const record = plan.record;
    if (opts.chunkSize !== undefined && opts.chunkSize !== record.chunkSize) {
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        `the store was formatted with chunk size ${record.chunkSize}; --chunk-size ${opts.chunkSize} was given`,
      );
    }
    const { space, counts } = openSpace(record.chunkSize, plan.ranges, readOnly);
    let store: DiffStore;
    let opened: Awaited<ReturnType<typeof Journal.open>>;
    let suspect: DataRecord[] = [];
    try {
      opened = await Journal.open(space, record.firstJournalSlot ?? 0, {
        readOnly,
        generation: record.journalGeneration ?? 0,
        // After a crash, the last batch's data is checked against its records' checksums (one
        // sync per batch); `before` gives the device sizes and what is still in use (verify.ts).
        // The batch is never dropped: its sync may have returned (then origin writes went ahead
        // and the chunk was damaged since), and a batch guards more than its copies (change
        // tracking). What does not match is handed to the snapshot layer (`suspect`), which
        // rewrites the copy from the origin when the origin still holds it, or records it lost.
        verifyLastBatch: async (batch, before) => {
          suspect = await mismatchedData(space, batch, chunkLengths(before, batch, record.chunkSize));
          return true;
        },
      });
      store = new DiffStore(space, opened.journal, record, counts);
    } catch (err) {
      space.close();
      throw err;
    }
    try {
      checkCleanStop(record, opened.report);
      if (record.cleanAt !== undefined && !readOnly) await store.clearCleanStop();
      if (plan.moved && !readOnly) await store.label.recordPaths(plan.ranges);
      for (const r of plan.appends) await store.append(r);
    } catch (err) {
      store.abandon(); // no CLEAN batch and no clean-stop mark: this start did not happen
      throw err;
    }
    return { store, records: opened.records, report: opened.report, suspect };
  }

  /**
   * A new store on `ranges` (range 0 first), whatever they hold: the caller decided they may be
   * formatted (blank, or `nbdsnap store format`). Labels ranges 1.. first, then range 0 with the
   * record: range 0's label is what makes the store exist.
   */
  static async create(ranges: StoreRange[], chunkSize: number, kind: StoreKind): Promise<DiffStore> {
    const { space, counts } = openSpace(chunkSize, ranges);
    try {
      const journal = kind === 'persistent' ? await Journal.create(space) : undefined;
      const record = newSuperblock(kind, chunkSize, ranges, journal?.slots[0]);
      for (let i = 1; i < ranges.length; i++) await space.writeLabel(i, encodeLabelPair(rangeLabel(record, i)), 0);
      await space.sync();
      const store = new DiffStore(space, journal, record, counts);
      // Both copies (generations 2 and 3): a store whose one written copy is damaged is lost whole.
      await store.label.write();
      await store.label.write();
      return store;
    } catch (err) {
      space.close();
      throw err;
    }
  }

  /**
   * Add a range while snapshots are held. Only a blank range is accepted (or one this store
   * labelled as its next range before a crash); its label is made durable, then range 0 records
   * it, and only then are its slots handed out (a crash in between must not leave mappings to
   * slots the recorded store does not have). If either write fails the range is not added.
   */
  append(range: StoreRange): Promise<void> {
    return this.label.exclusive(async () => {
      const { first, slots } = await this.label.appendRange(range);
      this.slotsPerRange.push(slots);
      this.space.makeAvailable(first, slots);
    });
  }

  /** A free slot for chunk data, or undefined when the store is full (the journal keeps a reserve). */
  allocate(): number | undefined {
    if (this.space.free <= (this.transient ? 0 : JOURNAL_RESERVE)) return undefined;
    return this.space.allocate();
  }

  /**
   * Up to `count` free slots for chunk data, consecutive in one range where the free space allows
   * (space.ts); fewer (maybe none) when the store is nearly full (the journal keeps its reserve).
   */
  allocateRun(count: number): number[] {
    const room = this.space.free - (this.transient ? 0 : JOURNAL_RESERVE);
    return room <= 0 ? [] : this.space.allocateRun(Math.min(count, room));
  }

  release(slot: number): void {
    this.space.release(slot);
  }

  claim(slot: number): void {
    this.space.claim(slot);
  }

  /** Write into a slot; whole-slot writes are coalesced with others (slot-writer.ts). */
  writeSlot(slot: number, data: Buffer, offsetInSlot = 0): Promise<void> {
    if (offsetInSlot === 0 && data.length === this.chunkSize) return this.writer.write(slot, data);
    return this.space.writeSlot(slot, data, offsetInSlot);
  }

  readSlot(slot: number, length: number, offsetInSlot = 0): Promise<Buffer> {
    return this.space.readSlot(slot, length, offsetInSlot);
  }

  /**
   * Make records (and all data written before) durable. Transient: nothing to do.
   * `copies` (whole slots the records point to) are written first: with the journal's batch and
   * its sync in one hand-off where the store allows (copy-writes.ts), else coalesced
   * (slot-writer.ts) before the records are queued. A copy that cannot be written rejects with a
   * copy-write failure (`isCopyWriteFailure`): its records are not written, the store is fine.
   * A failed commit leaves the journal's end unknown: the store is marked failed (in memory, and
   * in range 0's record if that can still be written) and refuses every later commit, so nothing
   * is ever recorded after a gap, and at the next start no snapshot is served as valid.
   */
  async commit(records: JournalRecord[], copies: readonly SlotData[] = []): Promise<void> {
    const journal = this.journal;
    if (journal !== undefined && this.closing) throw new NbdsnapError('ESHUTDOWN', 'the difference store is closed');
    if (journal !== undefined && this.failure !== undefined)
      throw new NbdsnapError('EIO', `difference store failed earlier: ${this.failure}`);
    let withBatch = copies;
    if (copies.length > 0 && (journal === undefined || !this.copiesJoinBatch(copies))) {
      const written = await Promise.allSettled(copies.map((c) => this.writer.write(c.slot, c.data)));
      for (const r of written) if (r.status === 'rejected') throw copyWriteFailure(r.reason);
      withBatch = [];
    }
    if (journal === undefined) return;
    try {
      await journal.append(records, withBatch);
    } catch (err) {
      if (!isCopyWriteFailure(err)) await this.markFailed((err as Error).message);
      throw err;
    }
    if (this.replaced.length > 0 && this.replaced.some((slot) => this.space.isUsed(slot))) {
      this.replaced = [];
      killPoint('checkpoint:old-reused');
    }
  }

  /**
   * Whether copies can go out in the journal's batch job: one local file (space.commitTarget),
   * and not under the test kill point between copies and records (slot-writer.ts has it).
   */
  private copiesJoinBatch(copies: readonly SlotData[]): boolean {
    if (this.killBetween) return false;
    return this.space.commitTarget(copies.map((c) => c.slot)) !== undefined;
  }

  /** Bytes of journal blocks (0 for a transient store). */
  get journalBytes(): number {
    return (this.journal?.slots.length ?? 0) * this.chunkSize;
  }

  /**
   * Replace the journal by a checkpoint: `records` (the state, as records that rebuild it from
   * nothing) written as a new journal of the next generation (checkpoint-writer.ts), then range
   * 0's label switched to it, then the old journal's slots released. Only while no commit is in
   * flight (the caller holds new ones back). A failure before the label write leaves the old
   * journal in use and throws (nothing depended on the new one; a store too full is ENOSPC). A
   * failed label write is fail-stop, like a failed commit: the store refuses later commits. Both
   * journals are durable then and describe the same state, so whichever the label names at the
   * next start is right. Returns undefined for a transient store.
   */
  checkpoint(records: Iterable<JournalRecord>): Promise<WrittenCheckpoint | undefined> {
    return this.label.exclusive(() => this.checkpointNow(records));
  }

  private async checkpointNow(records: Iterable<JournalRecord>): Promise<WrittenCheckpoint | undefined> {
    const journal = this.journal;
    if (journal === undefined) return undefined;
    if (this.closing) throw new NbdsnapError('ESHUTDOWN', 'the difference store is closed');
    if (this.failure !== undefined) throw new NbdsnapError('EIO', `difference store failed earlier: ${this.failure}`);
    if (journal.refused !== undefined) throw journal.refused;
    if (!journal.idle) throw new NbdsnapError('EINVAL', 'a checkpoint needs the journal idle');
    const generation = (journal.generation + 1) % 0x100000000;
    const written = await writeCheckpoint(this.space, records, generation, JOURNAL_RESERVE);
    const before = this.label.current;
    try {
      await this.label.update({
        ...before,
        firstJournalSlot: written.slots[0] as number,
        journalGeneration: generation,
      });
    } catch (err) {
      const why = `the label naming a checkpoint could not be written: ${errorMessage(err)}`;
      journal.fail(why);
      await this.markFailed(why);
      throw new NbdsnapError('EIO', why, { cause: err });
    }
    killPoint('checkpoint:label-written');
    const old = journal.adopt(written.at, written.slots, generation);
    for (const slot of old) this.space.release(slot);
    if (process.env.NBDSNAP_TEST_KILL_AT?.startsWith('checkpoint:old-reused') === true) this.replaced.push(...old);
    killPoint('checkpoint:old-released');
    return written;
  }

  /** Why the store failed (a commit could not be made durable), if it did since this start. */
  get failure(): string | undefined {
    return this.failedReason;
  }

  /** A failure recorded before this start (the record's flag), if any. */
  get failedBefore(): string | undefined {
    return this.label.current.failed;
  }

  /** After the snapshots of a failed store were recorded invalid: clear the record's flag. */
  clearFailedBefore(): Promise<void> {
    return this.label.clear('failed');
  }

  private async markFailed(reason: string): Promise<void> {
    if (this.failedReason !== undefined) return;
    this.failedReason = reason;
    if (this.transient) return;
    const failed = `${new Date().toISOString()}: ${reason}`;
    // The flag is a second line of defence: the commit's own failure already fails every write
    // that needed it, and every later commit. If the flag cannot be written either, say so.
    try {
      await this.label.update({ ...this.label.current, failed });
    } catch (err) {
      this.failedReason = `${reason}; recording the failure in the store's label failed too: ${errorMessage(err)}`;
    }
  }

  /** Make data written into slots durable (FLUSH on a writable snapshot). */
  sync(): Promise<void> {
    return this.transient ? Promise.resolve() : this.space.sync();
  }

  get freeSlots(): number {
    return Math.max(0, this.space.free - (this.transient ? 0 : JOURNAL_RESERVE));
  }

  get totalSlots(): number {
    return this.space.totalSlots;
  }

  status(): StoreStatus {
    const cs = this.chunkSize;
    const journalSlots = this.journal?.slots.length ?? 0; // the current journal only
    const total = this.space.totalSlots;
    return {
      chunkSize: cs,
      transient: this.transient,
      totalBytes: total * cs,
      usedBytes: (total - this.space.free - journalSlots) * cs,
      freeBytes: this.freeSlots * cs,
      journalBytes: journalSlots * cs,
      ranges: this.space.rangeList.map((r, i) => ({ ...r, slots: this.slotsPerRange[i] ?? 0 })),
    };
  }

  /** A graceful stop: the journal's CLEAN batch (unless the store failed), then the files closed. */
  async close(): Promise<void> {
    this.closing = true;
    try {
      if (this.failure === undefined && this.journal !== undefined && (await this.journal.close())) {
        // Where the journal ends after its CLEAN batch: the next start checks it ends there.
        await this.label.update({ ...this.label.current, cleanAt: this.journal.nextSeq });
      }
    } finally {
      this.space.close();
    }
  }

  /** Close the files without a CLEAN batch or a clean-stop mark (a start that failed). */
  abandon(): void {
    this.closing = true;
    this.space.close();
  }

  /** At start, once the clean-stop mark was checked: a crash from now on must not look clean. */
  clearCleanStop(): Promise<void> {
    return this.label.clear('cleanAt');
  }
}
