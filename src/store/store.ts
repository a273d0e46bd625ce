/**
 * The difference store: space (ranges cut into slots) plus its metadata journal, opened or
 * formatted from the `--store` ranges. Snapshot code sees slots and `commit(records)`; it does
 * not see superblocks or journal blocks.
 *
 * - Persistent (default): a superblock at the start of the first range records the chunk size
 *   and every range, so ranges appended at run time come back on restart; the journal records
 *   snapshots and chunk mappings; `commit()` returns once data and records are durable.
 * - Transient (`--transient`): the mapping lives in memory only and is gone at exit (blksnap's
 *   model); `commit()` returns at once, since nothing needs to survive a crash.
 *
 * Low free space (below `lowSpaceSlots`) and exhaustion are reported through `onSpace`.
 */
import { NbdsnapError } from '../errors.ts';
import { Journal } from './journal.ts';
import type { JournalRecord } from './records.ts';
import { type StoreRange, StoreSpace } from './space.ts';
import {
  decodeSuperblocks,
  encodeSuperblock,
  newSuperblock,
  SUPERBLOCK_AREA,
  SUPERBLOCK_COPY,
  type Superblock,
} from './superblock.ts';
import { chunkLengths, verifyBatchData } from './verify.ts';

/** Slots kept back from data so the journal can always record an invalidation. */
const JOURNAL_RESERVE = 2;

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
  private readonly journal: Journal | undefined;
  private superblock: Superblock | undefined;
  private readonly slotsPerRange: number[] = [];
  private failedReason: string | undefined;

  private constructor(space: StoreSpace, journal: Journal | undefined, sb: Superblock | undefined) {
    this.space = space;
    this.journal = journal;
    this.superblock = sb;
    this.transient = journal === undefined;
  }

  get chunkSize(): number {
    return this.space.chunkSize;
  }

  /** Open the store on `ranges` (first one first), formatting it if blank. Returns the replayed records. */
  static async open(ranges: StoreRange[], opts: StoreOptions): Promise<{ store: DiffStore; records: JournalRecord[] }> {
    const first = ranges[0];
    if (first === undefined) throw new NbdsnapError('BAD_ARGUMENT', 'no store range given');
    if (opts.transient) {
      const space = new StoreSpace(opts.chunkSize ?? 64 * 1024, 0);
      const store = new DiffStore(space, undefined, undefined);
      for (const r of ranges) store.addRange(r);
      return { store, records: [] };
    }
    const read = await probeSuperblock(first);
    if (read.state === 'blank' && opts.readOnly === true)
      throw new NbdsnapError('CORRUPT', `${first.path}: no difference store superblock`);
    if (read.state === 'blank') {
      // Formatting is only for a new store: if another given range starts with a store's
      // superblock, the ranges are in the wrong order, and formatting would destroy copies.
      for (const other of ranges.slice(1)) {
        if (
          other.length >= SUPERBLOCK_AREA &&
          (await probeSuperblock(other).catch(() => undefined))?.state === 'valid'
        ) {
          throw new NbdsnapError(
            'BAD_ARGUMENT',
            `the store's first range is ${other.path}:${other.start / 512}; give it as the first --store`,
          );
        }
      }
      return { store: await DiffStore.format(ranges, opts.chunkSize ?? 64 * 1024), records: [] };
    }

    const sb = read.sb;
    if (opts.chunkSize !== undefined && opts.chunkSize !== sb.chunkSize) {
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        `the store was formatted with chunk size ${sb.chunkSize}; --chunk-size ${opts.chunkSize} was given`,
      );
    }
    const space = new StoreSpace(sb.chunkSize, SUPERBLOCK_AREA, opts.readOnly);
    const known = sb.ranges;
    const counts = known.map((r) => space.add(r));
    const { journal, records } = await Journal.open(space, sb.firstJournalSlot, {
      readOnly: opts.readOnly === true,
      // `before`: the records replayed before the batch, for the device sizes (a last chunk is short).
      verifyLastBatch: (batch: JournalRecord[], before: JournalRecord[] = []) =>
        verifyBatchData(space, batch, chunkLengths(before, batch, sb.chunkSize)),
    });
    const store = new DiffStore(space, journal, sb);
    store.slotsPerRange.push(...counts);
    // Ranges given now but not yet recorded are appended (and recorded).
    for (const r of opts.readOnly === true ? [] : ranges) {
      if (!known.some((k) => k.path === r.path && k.start === r.start && k.length === r.length)) await store.append(r);
    }
    return { store, records };
  }

  private static async format(ranges: StoreRange[], chunkSize: number): Promise<DiffStore> {
    const space = new StoreSpace(chunkSize, SUPERBLOCK_AREA);
    const counts = ranges.map((r) => space.add(r));
    const journal = await Journal.create(space);
    const sb = newSuperblock(chunkSize, ranges, journal.slots[0] as number);
    const store = new DiffStore(space, journal, sb);
    store.slotsPerRange.push(...counts);
    // Both copies (generations 2 and 3): a store whose one written copy is damaged is lost whole.
    await store.writeSuperblock();
    await store.writeSuperblock();
    return store;
  }

  private addRange(r: StoreRange): void {
    this.slotsPerRange.push(this.space.add(r));
  }

  /**
   * Add a range while snapshots are held; recorded in the superblock before it is used: its slots
   * are handed out only once the superblock is durable (a crash in between must not leave
   * mappings to slots the recorded store does not have). If recording fails they stay unused.
   */
  async append(range: StoreRange): Promise<void> {
    if (range.length < this.chunkSize) throw new NbdsnapError('BAD_ARGUMENT', 'the range is smaller than one chunk');
    const first = this.space.totalSlots;
    const slots = this.space.add(range, this.superblock === undefined);
    this.slotsPerRange.push(slots);
    if (this.superblock !== undefined) {
      this.superblock = { ...this.superblock, ranges: [...this.superblock.ranges, range] };
      try {
        await this.writeSuperblock();
      } catch (err) {
        throw new NbdsnapError('EIO', `could not record the new range: ${(err as Error).message}`);
      }
      this.space.makeAvailable(first, slots);
    }
  }

  private async writeSuperblock(): Promise<void> {
    const sb = this.superblock as Superblock;
    sb.generation += 1;
    // Alternate copies by generation: a torn write leaves the other, older copy valid.
    await this.space.writeReserved(encodeSuperblock(sb), (sb.generation % 2) * SUPERBLOCK_COPY);
    await this.space.sync();
  }

  /** A free slot for chunk data, or undefined when the store is full (the journal keeps a reserve). */
  allocate(): number | undefined {
    if (this.space.free <= (this.transient ? 0 : JOURNAL_RESERVE)) return undefined;
    return this.space.allocate();
  }

  release(slot: number): void {
    this.space.release(slot);
  }

  claim(slot: number): void {
    this.space.claim(slot);
  }

  writeSlot(slot: number, data: Buffer, offsetInSlot = 0): Promise<void> {
    return this.space.writeSlot(slot, data, offsetInSlot);
  }

  readSlot(slot: number, length: number, offsetInSlot = 0): Promise<Buffer> {
    return this.space.readSlot(slot, length, offsetInSlot);
  }

  /**
   * Make records (and all data written before) durable. Transient: nothing to do.
   * A failed commit leaves the journal's end unknown: the store is marked failed (in memory, and
   * in the superblock if that can still be written) and refuses every later commit, so nothing
   * is ever recorded after a gap, and at the next start no snapshot is served as valid.
   */
  async commit(records: JournalRecord[]): Promise<void> {
    if (this.journal === undefined) return;
    if (this.failure !== undefined) throw new NbdsnapError('EIO', `difference store failed earlier: ${this.failure}`);
    try {
      await this.journal.append(records);
    } catch (err) {
      await this.markFailed((err as Error).message);
      throw err;
    }
  }

  /** Why the store failed (a commit could not be made durable), if it did since this start. */
  get failure(): string | undefined {
    return this.failedReason;
  }

  /** A failure recorded before this start (the superblock's flag), if any. */
  get failedBefore(): string | undefined {
    return this.superblock?.failed;
  }

  /** After the snapshots of a failed store were recorded invalid: clear the superblock's flag. */
  async clearFailedBefore(): Promise<void> {
    if (this.superblock?.failed === undefined) return;
    const { failed: _, ...rest } = this.superblock;
    this.superblock = rest;
    await this.writeSuperblock();
  }

  private async markFailed(reason: string): Promise<void> {
    if (this.failedReason !== undefined) return;
    this.failedReason = reason;
    if (this.superblock === undefined) return;
    this.superblock = { ...this.superblock, failed: `${new Date().toISOString()}: ${reason}` };
    await this.writeSuperblock().catch(() => undefined);
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
    const journalSlots = this.journal?.slots.length ?? 0;
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

  close(): void {
    this.space.close();
  }
}

/** Read the superblock copies at the start of a range (blank, valid, or a CORRUPT error). */
async function probeSuperblock(range: StoreRange) {
  const probe = new StoreSpace(4096, SUPERBLOCK_AREA, true);
  try {
    probe.add(range);
    return decodeSuperblocks(
      await probe.readReserved(SUPERBLOCK_COPY, 0),
      await probe.readReserved(SUPERBLOCK_COPY, SUPERBLOCK_COPY),
    );
  } finally {
    probe.close();
  }
}
