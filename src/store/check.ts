/**
 * `nbdsnap store check`: an offline check of a stopped store, the way fsck checks a file system.
 * Opens the store read-only (nothing is written), then checks, in order: both superblock
 * copies, the journal (every record's checksum, the chain, the data of its last batch), the
 * replayed state, and the checksum of every live copy (shared versions and private chunks).
 * Returns a report; `clean` is false when anything is damaged or recorded lost.
 */
import { errorMessage } from '../errors.ts';
import { replay } from '../snapshot/replay.ts';
import { type StoreRange, StoreSpace } from './space.ts';
import { DiffStore } from './store.ts';
import { decodeSuperblocks, SUPERBLOCK_AREA, SUPERBLOCK_COPY } from './superblock.ts';
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

export interface CheckReport {
  clean: boolean;
  ranges: StoreRange[];
  chunkSize?: number;
  superblocks: { copy: 'A' | 'B'; state: 'valid' | 'blank' | 'damaged'; generation?: number; problem?: string }[];
  journal: { ok: boolean; records?: number; problem?: string };
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
    superblocks: [],
    journal: { ok: false },
    copies: { checked: 0, damaged: 0, lost: 0, bytes: 0 },
    damaged: [],
    lost: [],
  };
  report.superblocks = await superblocks(ranges[0] as StoreRange);
  if (!report.superblocks.some((s) => s.state === 'valid')) {
    report.journal.problem = report.superblocks.every((s) => s.state === 'blank')
      ? 'not checked: both superblock copies are blank (not an nbdsnap store)'
      : 'not checked: no valid superblock';
    return report;
  }
  let opened: Awaited<ReturnType<typeof DiffStore.open>>;
  try {
    opened = await DiffStore.open(ranges, { transient: false, readOnly: true });
  } catch (err) {
    report.journal.problem = errorMessage(err);
    return report;
  }
  const { store, records } = opened;
  try {
    report.chunkSize = store.chunkSize;
    if (store.failedBefore !== undefined) report.failedBefore = store.failedBefore;
    const state = replay(records, store.chunkSize);
    report.journal = { ok: true, records: records.length };
    for (const origin of state.origins.values()) {
      const copies = [
        ...[...origin.table.entries()].map(([chunk, copy]) => ({ chunk, copy, own: false })),
        ...origin.snapshots.flatMap((s) => [...s.privateChunks].map(([chunk, copy]) => ({ chunk, copy, own: true }))),
      ];
      for (const { chunk, copy, own } of copies) {
        const readers = origin.snapshots.filter((s) => {
          const src = origin.table.resolve(chunk, s);
          return src.from === 'store' && src.copy === copy;
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
    report.journal = { ok: false, records: records.length, problem: errorMessage(err) };
  } finally {
    store.close();
  }
  report.copies.damaged = report.damaged.length;
  report.copies.lost = report.lost.length;
  report.clean =
    report.journal.ok &&
    report.superblocks.every((s) => s.state === 'valid') &&
    report.damaged.length === 0 &&
    report.lost.length === 0;
  return report;
}

/** Both superblock copies of the first range, each on its own. */
async function superblocks(first: StoreRange): Promise<CheckReport['superblocks']> {
  const probe = new StoreSpace(4096, SUPERBLOCK_AREA, true);
  const out: CheckReport['superblocks'] = [];
  try {
    probe.add(first);
    const blank = Buffer.alloc(SUPERBLOCK_COPY);
    for (const [i, copy] of (['A', 'B'] as const).entries()) {
      const buf = await probe.readReserved(SUPERBLOCK_COPY, i * SUPERBLOCK_COPY);
      try {
        const read = decodeSuperblocks(buf, blank);
        out.push(
          read.state === 'blank' ? { copy, state: 'blank' } : { copy, state: 'valid', generation: read.sb.generation },
        );
      } catch (err) {
        out.push({ copy, state: 'damaged', problem: errorMessage(err) });
      }
    }
  } catch (err) {
    out.push({ copy: 'A', state: 'damaged', problem: errorMessage(err) });
  } finally {
    probe.close();
  }
  return out;
}

/** The report as text, one finding a line. */
export function checkHuman(r: CheckReport): string {
  const lines = [`store ${r.ranges.map((x) => x.path).join(', ')}${r.chunkSize ? ` (chunk ${r.chunkSize})` : ''}`];
  for (const s of r.superblocks)
    lines.push(
      `superblock ${s.copy}: ${s.state}${s.generation === undefined ? '' : ` (generation ${s.generation})`}${s.problem ? `: ${s.problem}` : ''}`,
    );
  const problem = r.journal.problem ?? '';
  lines.push(
    r.journal.ok
      ? `journal: ${r.journal.records} records, ok`
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
