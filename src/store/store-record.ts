/**
 * Range 0's label as the store's record (superblock.ts), kept by the running store: each update
 * writes the record to its other copy with the next generation, durably, one at a time
 * (`exclusive`); a range appended at run time (label first, then the record); and the helpers
 * of opening (the space over the given ranges, a probe under this server's claim, the
 * clean-stop check). DiffStore (store.ts) holds one `StoreRecord` and does the rest.
 */
import { randomUUID } from 'node:crypto';
import { statSync } from 'node:fs';
import { claimStorage } from '../block/ownership.ts';
import { errorMessage, NbdsnapError } from '../errors.ts';
import type { JournalReport } from './journal.ts';
import { copyOffset, encodeLabel, encodeLabelPair, LABEL_AREA, rangeSpec } from './label.ts';
import { checkAppend } from './open.ts';
import { probeRange, type RangeContent } from './probe.ts';
import { type StoreRange, StoreSpace } from './space.ts';
import { rangeLabel, type Superblock } from './superblock.ts';

export class StoreRecord {
  private readonly space: StoreSpace;
  /** The record as last written (or about to be, inside `write`). */
  current: Superblock;
  /** Label updates that read and rewrite the record run one at a time (`exclusive`). */
  private turn: Promise<void> = Promise.resolve();

  constructor(space: StoreSpace, record: Superblock) {
    this.space = space;
    this.current = record;
  }

  /**
   * Run `fn` after every label update begun before it (append, checkpoint): each reads the record
   * and writes it back, so two at once could write back a record without the other's change.
   */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.turn.then(fn);
    this.turn = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** Write the record to its other copy, with the next generation, durably. */
  async write(): Promise<void> {
    const record = this.current;
    record.generation += 1;
    // Alternate copies by generation: a torn write leaves the other, older copy valid.
    await this.space.writeLabel(0, encodeLabel(record), copyOffset(record.generation));
    await this.space.sync();
  }

  /** Replace the record by `next` and write it. */
  async update(next: Superblock): Promise<void> {
    this.current = next;
    await this.write();
  }

  /** Record where the ranges are now (some path changed since the record was written). */
  recordPaths(ranges: StoreRange[]): Promise<void> {
    const r = this.current;
    return this.update({ ...r, ranges: r.ranges.map((x, i) => ({ ...x, path: (ranges[i] as StoreRange).path })) });
  }

  /** Drop a key of the record (`failed`, `cleanAt`) and write it; nothing if it is absent. */
  async clear(key: 'failed' | 'cleanAt'): Promise<void> {
    if (this.current[key] === undefined) return;
    const next = { ...this.current };
    delete next[key];
    await this.update(next);
  }

  /**
   * Add a blank range (or one this store labelled as its next range before a crash): its label
   * made durable, then the record. Returns the range's slot count and first slot; its slots stay
   * unavailable until the caller makes them so. If either write fails the range is not added.
   */
  async appendRange(range: StoreRange): Promise<{ first: number; slots: number }> {
    const chunkSize = this.space.chunkSize;
    if (range.length < LABEL_AREA + chunkSize) {
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        `the range is smaller than one chunk after its ${LABEL_AREA / 1024} KiB label area`,
      );
    }
    const st = statSync(range.path);
    const other = this.space.overlaps(st.dev, st.ino, range.start, range.length);
    if (other !== undefined) {
      throw new NbdsnapError('BAD_ARGUMENT', `store range ${rangeSpec(range)} overlaps ${rangeSpec(other)}`);
    }
    const id = checkAppend(range, await probeOwned(range), this.current);
    const index = this.current.ranges.length;
    const first = this.space.totalSlots;
    const slots = this.space.add(range, false);
    const before = this.current;
    const entry = { path: range.path, start: range.start, length: range.length, id: id ?? randomUUID() };
    this.current = { ...before, ranges: [...before.ranges, entry] };
    try {
      await this.space.writeLabel(index, encodeLabelPair(rangeLabel(this.current, index)), 0);
      await this.space.sync();
      await this.write();
    } catch (err) {
      this.space.dropLast();
      this.current = { ...before, generation: this.current.generation };
      throw new NbdsnapError('EIO', `could not record the new range: ${errorMessage(err)}`);
    }
    return { first, slots };
  }
}

/** A space over `ranges` (opened read-write or read-only; overlaps and sizes checked), before anything is written. */
export function openSpace(
  chunkSize: number,
  ranges: StoreRange[],
  readOnly = false,
): { space: StoreSpace; counts: number[] } {
  const space = new StoreSpace(chunkSize, LABEL_AREA, readOnly);
  try {
    return { space, counts: ranges.map((r) => space.add(r)) };
  } catch (err) {
    space.close();
    throw err;
  }
}

/**
 * Read what a range holds only once this server may own it: a range another process holds is
 * refused as in use (naming the holder), before its content is judged.
 */
export async function probeOwned(range: StoreRange): Promise<RangeContent> {
  const claim = claimStorage(range.path, { exclusive: true, role: 'store', start: range.start, length: range.length });
  try {
    return await probeRange(range);
  } finally {
    claim.release();
  }
}

/**
 * After a graceful stop range 0 records where the journal ended (`cleanAt`). Replay must end
 * there, on the CLEAN batch: ending anywhere else means the journal's end was lost or damaged
 * after the stop (sectors that read as zeros look like a crash's torn tail to replay alone).
 */
export function checkCleanStop(record: Superblock, report: JournalReport | undefined): void {
  if (record.cleanAt === undefined || report === undefined) return;
  if (report.cleanStop && report.stop.seq === record.cleanAt) return;
  throw new NbdsnapError(
    'CORRUPT',
    `difference store journal is damaged: the store was stopped cleanly at journal record ${record.cleanAt}, but its journal ends at record ${report.stop.seq}${report.cleanStop ? '' : ' without its clean-stop batch'}; refusing to start`,
  );
}
