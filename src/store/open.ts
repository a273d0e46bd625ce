/**
 * The open rules: which store the given `--store` ranges are, decided from their labels (store
 * uuid, range index, range id, extent), never from their paths, and before anything is written.
 *
 * - The first given range must be range 0 of its store (it holds the record of every range);
 *   ranges it records and that are not given are opened where the record says. A given range is
 *   matched to the record by its label, so a range whose path changed is given at its new path.
 * - A given range that is blank (reads as zeros) and not recorded is appended, after the
 *   recorded ones; so is one labelled with this store's uuid and the next index (an append that
 *   crashed before range 0 recorded it).
 * - Everything else is refused with one line: a range of another store, a range N > 0 given
 *   first, ranges out of order, a recorded range missing or not carrying its label, a range
 *   holding foreign data or a signature, an unreadable label.
 * - All given ranges blank: a new store. `--transient`: blank or transient-labelled ranges only.
 */
import { NbdsnapError } from '../errors.ts';
import { type Label, type RecordedRange, rangeSpec } from './label.ts';
import { describeContent, type RangeContent, refuseContent } from './probe.ts';
import type { StoreRange } from './space.ts';
import { asSuperblock, type Superblock } from './superblock.ts';

export type Probe = (range: StoreRange) => Promise<RangeContent>;

export type OpenPlan =
  /** Every given range is blank: format a new store on them. */
  | { kind: 'new'; ranges: StoreRange[] }
  /**
   * An existing store: its record, its ranges by index where they are now (`moved`: some path
   * differs from the record), and the ranges to append.
   */
  | { kind: 'existing'; record: Superblock; ranges: StoreRange[]; moved: boolean; appends: StoreRange[] };

async function probeAll(given: StoreRange[], probe: Probe): Promise<RangeContent[]> {
  const out: RangeContent[] = [];
  for (const r of given) out.push(await probe(r)); // one at a time: a zero check may read a lot
  return out;
}

const refuse = (message: string) => new NbdsnapError('BAD_ARGUMENT', message);

/** Where range 0 of a label's store is, for messages. */
const firstOf = (l: Label): string => (l.first === undefined ? 'range 0' : rangeSpec(l.first));

function notFirst(range: StoreRange, l: Label): NbdsnapError {
  return refuse(
    `store range ${rangeSpec(range)} is range ${l.index} of store ${l.uuid}; give its first range ${firstOf(l)} first`,
  );
}

/** Plan the open of a persistent store on `given` (range 0 first). */
export async function planOpen(given: StoreRange[], probe: Probe): Promise<OpenPlan> {
  const contents = await probeAll(given, probe);
  const first = given[0] as StoreRange;
  const c0 = contents[0] as RangeContent;
  if (c0.kind === 'blank') return planNew(given, contents);
  if (c0.kind !== 'label') throw refuseContent(first, c0) as NbdsnapError;
  const l = c0.label;
  if (l.kind === 'transient') {
    throw refuse(
      `store range ${rangeSpec(first)} holds transient store ${l.uuid}; serve it with --transient, or make it a persistent store with nbdsnap store format ${rangeSpec(first)}`,
    );
  }
  if (l.index !== 0) throw notFirst(first, l);
  checkExtent(first, l);
  const record = asSuperblock(l, first);
  const found = new Map<number, StoreRange>([[0, { path: first.path, start: l.start, length: l.length }]]);
  const appends: StoreRange[] = [];
  let last = 0;
  given.forEach((range, i) => {
    if (i === 0) return;
    const c = contents[i] as RangeContent;
    if (c.kind === 'blank') {
      appends.push(range);
      return;
    }
    if (c.kind !== 'label') throw refuseContent(range, c, true) as NbdsnapError;
    const j = matchGiven(range, c.label, record);
    if (j === record.ranges.length) {
      if (appends.length > 0) {
        throw refuse(
          `store ranges given in the wrong order: ${rangeSpec(range)}, range ${j} of store ${record.uuid} (appended, not yet recorded), comes after a new range`,
        );
      }
      appends.push({ path: range.path, start: c.label.start, length: c.label.length });
      return;
    }
    if (j <= last) {
      throw refuse(
        j === last
          ? `store range ${rangeSpec(range)} is range ${j} of store ${record.uuid}, given twice`
          : `store ranges given in the wrong order: ${rangeSpec(range)} is range ${j} of store ${record.uuid} but comes after its range ${last}; give them in store order, range 0 first`,
      );
    }
    if (appends.length > 0) {
      throw refuse(
        `store ranges given in the wrong order: new range ${rangeSpec(appends[0] as StoreRange)} comes before ${rangeSpec(range)}, range ${j} of store ${record.uuid}; give the recorded ranges first`,
      );
    }
    found.set(j, { path: range.path, start: c.label.start, length: c.label.length });
    last = j;
  });
  for (let j = 1; j < record.ranges.length; j++) {
    if (!found.has(j)) found.set(j, await openRecorded(record, j, probe));
  }
  const ranges = record.ranges.map((_, j) => found.get(j) as StoreRange);
  const moved = ranges.some((r, j) => r.path !== record.ranges[j]?.path);
  return { kind: 'existing', record, ranges, moved, appends };
}

/**
 * `store check`: an existing store only, opened without writing anything. Blank ranges are not a
 * store; a range that would be appended is not part of it yet (a check appends nothing).
 */
export async function planCheck(given: StoreRange[], probe: Probe): Promise<Extract<OpenPlan, { kind: 'existing' }>> {
  const plan = await planOpen(given, probe);
  if (plan.kind === 'new')
    throw new NbdsnapError(
      'CORRUPT',
      `store range ${rangeSpec(given[0] as StoreRange)} is blank: not an nbdsnap store`,
    );
  const extra = plan.appends[0];
  if (extra !== undefined)
    throw refuse(
      `store range ${rangeSpec(extra)} is not a range of store ${plan.record.uuid}; a check appends nothing`,
    );
  return plan;
}

/** A label must sit where it says its range starts; the range given may be longer (a grown file). */
function checkExtent(range: StoreRange, l: Label): void {
  if (range.start !== l.start || range.length < l.length) {
    throw refuse(
      `store range ${rangeSpec(range)} carries the label of range ${l.index} of store ${l.uuid}, labelled as sectors ${l.start / 512}+${l.length / 512}; give it with that extent`,
    );
  }
}

/** The index of a given, labelled range in the store of `record` (or a refusal). */
function matchGiven(range: StoreRange, l: Label, record: Superblock): number {
  const spec = rangeSpec(range);
  if (l.uuid !== record.uuid) {
    throw refuse(
      `store range ${spec} belongs to another store: it is range ${l.index} of ${l.kind} store ${l.uuid}, not of store ${record.uuid}; refusing to use it`,
    );
  }
  if (l.kind !== record.kind || l.index === 0) {
    throw refuse(
      `store range ${spec} is range ${l.index} of store ${l.uuid} again: given twice, or a copy of it; refusing to use it`,
    );
  }
  checkExtent(range, l);
  const recorded = record.ranges[l.index];
  if (l.index === record.ranges.length) return l.index; // an append that crashed before being recorded
  if (recorded === undefined) {
    throw refuse(
      `store range ${spec} is labelled range ${l.index} of store ${l.uuid}, which records only ${record.ranges.length} ranges; refusing to use it`,
    );
  }
  if (recorded.id !== l.id || recorded.start !== l.start || recorded.length !== l.length) {
    throw refuse(
      `store range ${spec} is labelled range ${l.index} of store ${l.uuid}, but not the range the store recorded there (${rangeSpec(recorded)}); refusing to use it`,
    );
  }
  return l.index;
}

/** A recorded range not given: open it where the record says, and check that its label is there. */
async function openRecorded(record: Superblock, j: number, probe: Probe): Promise<StoreRange> {
  const r = record.ranges[j] as RecordedRange;
  const what = `range ${j} of store ${record.uuid}, recorded at ${rangeSpec(r)},`;
  let c: RangeContent;
  try {
    c = await probe(r);
  } catch (err) {
    throw refuse(
      `store ${what} is missing (${(err as Error).message}); give it where it is now, after the first range`,
    );
  }
  const l = c.kind === 'label' ? c.label : undefined;
  if (
    l === undefined ||
    l.uuid !== record.uuid ||
    l.index !== j ||
    l.id !== r.id ||
    l.start !== r.start ||
    l.length !== r.length
  ) {
    throw refuse(
      `store ${what} is missing: that range holds ${describeContent(c)}; give the range where it is now, after the first`,
    );
  }
  return { path: r.path, start: r.start, length: r.length };
}

/** The first range is blank: every other given range must be blank too (then: a new store). */
function planNew(given: StoreRange[], contents: RangeContent[]): OpenPlan {
  given.forEach((range, i) => {
    const c = contents[i] as RangeContent;
    if (c.kind === 'blank') return;
    if (c.kind !== 'label') throw refuseContent(range, c) as NbdsnapError;
    const l = c.label;
    if (l.kind === 'persistent' && l.index === 0) {
      throw refuse(
        `store ranges given in the wrong order: the first range of store ${l.uuid} is ${rangeSpec(range)}; give it as the first --store`,
      );
    }
    if (l.kind === 'persistent') throw notFirst(range, l);
    throw refuse(
      `store range ${rangeSpec(range)} holds transient store ${l.uuid}, not blank; refusing to make it part of a new store (nbdsnap store format makes a new store of all the ranges)`,
    );
  });
  return { kind: 'new', ranges: given };
}

/**
 * `--transient`: only blank ranges, or ranges with a transient label (relabelled). A range
 * holding a persistent store is never written to.
 */
export async function planTransient(given: StoreRange[], probe: Probe): Promise<StoreRange[]> {
  const contents = await probeAll(given, probe);
  given.forEach((range, i) => {
    const c = contents[i] as RangeContent;
    if (c.kind === 'label' && c.label.kind === 'persistent') {
      throw refuse(
        `store range ${rangeSpec(range)} holds persistent store ${c.label.uuid} with its snapshots; --transient would destroy them`,
      );
    }
    if (c.kind !== 'label' && c.kind !== 'blank') throw refuseContent(range, c) as NbdsnapError;
  });
  return given;
}

/**
 * A range appended at run time: blank, or labelled with this store's uuid and the next index (an
 * append that crashed before range 0 recorded it). Returns its id if it has one.
 */
export function checkAppend(range: StoreRange, c: RangeContent, record: Superblock): string | undefined {
  if (c.kind === 'blank') return undefined;
  if (c.kind !== 'label') throw refuseContent(range, c, true) as NbdsnapError;
  const l = c.label;
  const spec = rangeSpec(range);
  if (l.uuid !== record.uuid) {
    throw refuse(
      `store range ${spec} belongs to another store: it is range ${l.index} of ${l.kind} store ${l.uuid}; refusing to use it`,
    );
  }
  if (l.index < record.ranges.length) throw refuse(`store range ${spec} is already range ${l.index} of this store`);
  if (
    l.index > record.ranges.length ||
    l.kind !== record.kind ||
    l.start !== range.start ||
    l.length !== range.length
  ) {
    throw refuse(
      `store range ${spec} carries a label of store ${l.uuid} that does not fit as its next range; refusing to use it`,
    );
  }
  return l.id;
}
