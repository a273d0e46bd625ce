/**
 * `nbdsnap store check`: an offline check of a stopped store, the way fsck checks a file system.
 * Opens the store read-only (open.ts rules; files opened for reading under a shared claim, so a
 * server holding the store refuses the check; nothing is written), then checks, in order: both
 * label copies of every range, the journal (every record's checksum, the chain, the data of its
 * last batch: replay's report), the replayed state, and the checksum of every live copy (shared
 * versions and private chunks). Returns a report; `clean` is false when anything is damaged or
 * recorded lost.
 */
import { closeSync, constants, openSync, readSync } from 'node:fs';
import { errorMessage } from '../errors.ts';
import { openRemote } from '../remote/remote-ranges.ts';
import { isRemote } from '../remote/uri.ts';
import { sameCopy } from '../snapshot/exception-table.ts';
import { replay } from '../snapshot/transition.ts';
import type { JournalReport } from './journal.ts';
import { decodeLabelCopy, LABEL_COPY } from './label.ts';
import type { StoreRange } from './space.ts';
import { DiffStore } from './store.ts';
import { readVerified } from './verify.ts';

export interface CheckedCopy {
  device: string;
  chunk: number;
  slot: number;
  /** Where the slot lies. */
  path: string;
  offset: number;
  /** The snapshots that read this copy (export names). */
  snapshots: string[];
  private: boolean;
}

export interface LabelCopyCheck {
  /** The range's index in the store (its position as given, when the store could not be opened). */
  range: number;
  path: string;
  copy: 'A' | 'B';
  state: 'valid' | 'blank' | 'damaged';
  generation?: number;
  problem?: string;
}

export interface CheckReport {
  clean: boolean;
  ranges: StoreRange[];
  chunkSize?: number;
  /** Both label copies of every range of the store. */
  labels: LabelCopyCheck[];
  /** `report`: what replay found (batches, where and why it stopped: clean, torn, end). */
  journal: { ok: boolean; records?: number; problem?: string; report?: JournalReport };
  /** The store's failure flag: a commit failed in an earlier run (its snapshots become invalid at the next start). */
  failedBefore?: string;
  copies: { checked: number; damaged: number; lost: number; bytes: number };
  /** Copies whose data fails its checksum now. */
  damaged: CheckedCopy[];
  /** Copies recorded lost (LOST) by an earlier read or scrub. */
  lost: CheckedCopy[];
}

export async function checkStore(ranges: StoreRange[]): Promise<CheckReport> {
  const report: CheckReport = {
    clean: false,
    ranges,
    labels: [],
    journal: { ok: false },
    copies: { checked: 0, damaged: 0, lost: 0, bytes: 0 },
    damaged: [],
    lost: [],
  };
  let opened: Awaited<ReturnType<typeof DiffStore.open>>;
  try {
    opened = await DiffStore.open(ranges, { transient: false, readOnly: true });
  } catch (err) {
    report.labels = (await Promise.all(ranges.map((r, i) => labelCopies(r, i)))).flat();
    const first = report.labels.filter((l) => l.range === 0);
    report.journal.problem = first.every((l) => l.state === 'blank')
      ? `not checked: ${errorMessage(err)} (no label: not an nbdsnap store)`
      : `not checked: ${errorMessage(err)}`;
    return report;
  }
  const { store, records } = opened;
  try {
    report.chunkSize = store.chunkSize;
    report.ranges = store.space.rangeList;
    report.labels = (await Promise.all(report.ranges.map((r, i) => labelCopies(r, i, store.uuid)))).flat();
    if (store.failedBefore !== undefined) report.failedBefore = store.failedBefore;
    report.journal = { ok: true, records: records.length, ...(opened.report ? { report: opened.report } : {}) };
    const state = replay(records, store.chunkSize);
    for (const origin of state.origins.values()) {
      const copies = [
        ...[...origin.table.entries()].map(([chunk, copy]) => ({ chunk, copy, own: false })),
        ...origin.snapshots.flatMap((s) => [...s.privateChunks].map(([chunk, copy]) => ({ chunk, copy, own: true }))),
      ];
      for (const { chunk, copy, own } of copies) {
        const readers = origin.snapshots.filter((s) => {
          const src = origin.table.resolve(chunk, s);
          return src.from === 'store' && sameCopy(src.copy, copy);
        });
        const where: CheckedCopy = {
          device: origin.name,
          chunk,
          slot: copy.slot,
          ...store.space.locate(copy.slot),
          snapshots: readers.map((s) => `${origin.name}@${s.name}`),
          private: own,
        };
        if (copy.lost) {
          report.lost.push(where);
          continue;
        }
        const length = origin.chunkLength(chunk);
        const ok = (await readVerified(store, copy.slot, copy.crc, length)) !== undefined;
        report.copies.checked += 1;
        report.copies.bytes += length;
        if (!ok) report.damaged.push(where);
      }
    }
  } catch (err) {
    report.journal = { ...report.journal, ok: false, records: records.length, problem: errorMessage(err) };
  } finally {
    await store.close();
  }
  report.copies.damaged = report.damaged.length;
  report.copies.lost = report.lost.length;
  report.clean =
    report.journal.ok &&
    report.labels.every((s) => s.state === 'valid') &&
    report.damaged.length === 0 &&
    report.lost.length === 0;
  return report;
}

/** Both label copies of `range` (read-only), each on its own; `uuid`: the store they must name. */
async function labelCopies(range: StoreRange, index: number, uuid?: string): Promise<LabelCopyCheck[]> {
  const out: LabelCopyCheck[] = [];
  let fd: number | undefined;
  try {
    // A range on a remote export is read through its connection (src/remote/remote-ranges.ts).
    const remote = isRemote(range.path) ? await openRemote(range.path, true) : undefined;
    if (remote === undefined) fd = openSync(range.path, constants.O_RDONLY);
    for (const [i, copy] of (['A', 'B'] as const).entries()) {
      const at = { range: index, path: range.path, copy };
      const room = Buffer.alloc(Math.max(0, Math.min(LABEL_COPY, range.length - i * LABEL_COPY)));
      const where = range.start + i * LABEL_COPY;
      const buf =
        remote === undefined
          ? room.subarray(0, readSync(fd as number, room, 0, room.length, where))
          : await remote.read(where, room.length);
      const read = decodeLabelCopy(buf);
      if (read.state === 'none') out.push({ ...at, state: buf.some((b) => b !== 0) ? 'damaged' : 'blank' });
      else if (read.state === 'version')
        out.push({ ...at, state: 'damaged', problem: `format version ${read.version}, not 2` });
      else if (read.state === 'bad') out.push({ ...at, state: 'damaged', problem: read.why });
      else if (uuid !== undefined && (read.label.uuid !== uuid || read.label.index !== index))
        out.push({
          ...at,
          state: 'damaged',
          generation: read.label.generation,
          problem: `labelled range ${read.label.index} of store ${read.label.uuid}, not range ${index} of ${uuid}`,
        });
      else out.push({ ...at, state: 'valid', generation: read.label.generation });
    }
  } catch (err) {
    out.push({ range: index, path: range.path, copy: 'A', state: 'damaged', problem: errorMessage(err) });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return out;
}

/** The report as text, one finding a line. */
export function checkHuman(r: CheckReport): string {
  const lines = [`store ${r.ranges.map((x) => x.path).join(', ')}${r.chunkSize ? ` (chunk ${r.chunkSize})` : ''}`];
  for (const s of r.labels)
    lines.push(
      `range ${s.range} (${s.path}) label ${s.copy}: ${s.state}${s.generation === undefined ? '' : ` (generation ${s.generation})`}${s.problem ? `: ${s.problem}` : ''}`,
    );
  const problem = r.journal.problem ?? '';
  const j = r.journal.report;
  const stop =
    j === undefined
      ? ''
      : `, ${j.batches} batches in ${j.blocks} blocks (generation ${j.generation}${j.checkpoint ? ', starts with a checkpoint' : ''}), ended ${j.reason}${j.torn ? ` (${j.torn})` : ''}`;
  lines.push(
    r.journal.ok
      ? `journal: ${r.journal.records} records${stop}, ok`
      : `journal: ${problem.startsWith('not checked') ? problem : `DAMAGED: ${problem}`}`,
  );
  if (r.failedBefore !== undefined) lines.push(`store failed in an earlier run: ${r.failedBefore}`);
  if (r.journal.ok)
    lines.push(
      `copies: ${r.copies.checked} checked, ${r.copies.damaged} damaged, ${r.copies.lost} recorded lost before`,
    );
  const copy = (what: string, c: CheckedCopy) =>
    `${what}: slot ${c.slot} (${c.path} at byte ${c.offset}), ${c.device} chunk ${c.chunk}${c.private ? ' (private)' : ''}, read by ${c.snapshots.join(', ') || 'no snapshot'}`;
  for (const c of r.damaged) lines.push(copy('damaged', c));
  for (const c of r.lost) lines.push(copy('lost', c));
  lines.push(r.clean ? 'clean' : 'DAMAGED');
  return lines.join('\n');
}
