/**
 * `nbdsnap restore FILE... TARGET`: apply a full backup and then incrementals, in order, to a
 * file, a block device or an NBD export.
 *
 * Before anything is written: every file is read and checked completely and the chain's order
 * and ids checked (chain.ts); the target must be big enough; if the chain starts with an
 * incremental, the target must already hold its base: the SHA-256 of every sampled unchanged
 * block must match. Any failure leaves the target untouched (not even created).
 * Then the undo journal (undo.ts) saves the old contents of every range to be written, durably,
 * and only then are the files applied, one after the other; before each later incremental its
 * samples are checked again against what the target now holds. Finally the target is flushed
 * and the journal completed with the hash of what was written.
 */
import { createHash } from 'node:crypto';
import { existsSync, truncateSync, unlinkSync } from 'node:fs';
import { basename } from 'node:path';
import { errorMessage, NbdsnapError } from '../errors.ts';
import { type ChainFile, describeSnap, loadChain } from './chain.ts';
import { FORMAT_VERSION, RecordType } from './format.ts';
import { orderedMap, Window } from './pipeline.ts';
import { Progress } from './progress.ts';
import { BackupReader } from './reader.ts';
import { isNbdUri, openTarget, probeTarget, type Target } from './target.ts';
import { journalPieces, UndoJournal } from './undo.ts';

export interface RestoreOptions {
  files: string[];
  target: string;
  /** Undo journal path (default: defaultJournalPath). */
  journal?: string | undefined;
  progress?: Progress | undefined;
}

export interface RestoreResult {
  files: ChainFile[];
  journal: string;
  writtenBytes: number;
}

/** TARGET.undo-STAMP beside a file target; ./nbdsnap-undo-NAME-STAMP for devices and exports. */
export function defaultJournalPath(target: string, now = new Date()): string {
  const stamp = now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  if (!isNbdUri(target) && !target.startsWith('/dev/')) return `${target}.undo-${stamp}`;
  const name = isNbdUri(target) ? new URL(target).pathname.slice(1) || 'export' : basename(target);
  return `nbdsnap-undo-${name.replace(/[^A-Za-z0-9._-]/g, '_')}-${stamp}`;
}

/** Samples of `f` whose content on the target differs. */
async function badSamples(target: Target, f: ChainFile): Promise<{ offset: number; length: number }[]> {
  const bad: { offset: number; length: number }[] = [];
  const check = async (s: ChainFile['samples'][number]) => {
    const now = createHash('sha256')
      .update(await target.read(s.offset, s.length))
      .digest();
    return { s, ok: now.equals(s.sha256) };
  };
  for await (const { s, ok } of orderedMap(f.samples, 8, check)) if (!ok) bad.push(s);
  return bad;
}

function baseMismatch(f: ChainFile, target: string, bad: { offset: number; length: number }[]): string {
  const first = bad[0] as { offset: number; length: number };
  return (
    `${target} does not hold ${describeSnap(f.header, 'from')}, the base of ${f.path}: ` +
    `${bad.length} of ${f.samples.length} sampled unchanged blocks differ (first at byte ${first.offset})`
  );
}

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const progress = opts.progress ?? new Progress('none');
  const chain = await loadChain(opts.files, progress);
  const first = chain[0] as ChainFile;
  const size = first.header.deviceSize;
  const info = await probeTarget(opts.target);
  const blank = info.kind === 'missing' || (info.kind === 'file' && info.size === 0);
  if (!blank && info.size < size)
    throw new NbdsnapError(
      'BAD_ARGUMENT',
      `target ${opts.target} is ${info.size} bytes, smaller than the ${size}-byte device in ${first.path}`,
    );
  if (first.header.kind === 'incremental' && blank)
    throw new NbdsnapError(
      'BAD_ARGUMENT',
      `${first.path} is an incremental from ${describeSnap(first.header, 'from')}, but ${opts.target} is empty: ` +
        'restore the full backup and the incrementals before it first (or name them all)',
    );
  const journalPath = opts.journal ?? defaultJournalPath(opts.target);
  if (existsSync(journalPath)) throw new NbdsnapError('EXISTS', `undo journal ${journalPath} already exists`);

  let target: Target | undefined;
  let journal: UndoJournal | undefined;
  let writing = false;
  try {
    if (first.header.kind === 'incremental') {
      target = await openTarget(info, size); // neither created nor grown: it is not blank
      const bad = await badSamples(target, first);
      if (bad.length > 0) throw new NbdsnapError('BAD_ARGUMENT', baseMismatch(first, opts.target, bad));
    }
    target ??= await openTarget(info, size);
    const sizeBefore = blank ? 0 : info.size;
    try {
      journal = await UndoJournal.prepare(
        journalPath,
        {
          version: FORMAT_VERSION,
          sizeBefore,
          sizeAfter: target.size,
          created: info.kind === 'missing',
          createdAt: Date.now(),
          target: opts.target,
          chain: chain.map((f) => f.header.backupId).join(','),
        },
        target,
        journalPieces(chain.map((f) => f.ranges)),
      );
    } catch (err) {
      // nothing was written: put a created or grown file back as it was
      await target.close();
      if (info.kind === 'missing') unlinkSync(opts.target);
      else if (blank) truncateSync(opts.target, 0);
      throw err;
    }
    writing = true;
    const writtenBytes = await applyChain(chain, target, opts.target, progress);
    await target.flush();
    await journal.complete(target);
    return { files: chain, journal: journalPath, writtenBytes };
  } catch (err) {
    progress.abort();
    if (!writing) throw err;
    const code = err instanceof NbdsnapError ? err.code : 'EIO';
    throw new NbdsnapError(
      code,
      `restore failed while writing ${opts.target}: ${errorMessage(err)}; put the target back with: ` +
        `nbdsnap restore --undo ${journalPath} ${opts.target}`,
    );
  } finally {
    await journal?.close().catch(() => undefined);
    await target?.close().catch(() => undefined);
  }
}

async function applyChain(chain: ChainFile[], target: Target, name: string, progress: Progress): Promise<number> {
  progress.start(
    'restore',
    chain.reduce((n, f) => n + f.totals.dataBytes + f.totals.zeroBytes + f.totals.discardBytes, 0),
  );
  let written = 0;
  for (const [i, f] of chain.entries()) {
    if (i > 0 && f.samples.length > 0) {
      const bad = await badSamples(target, f);
      if (bad.length > 0) throw new NbdsnapError('CORRUPT', baseMismatch(f, name, bad));
    }
    const r = await BackupReader.open(f.path);
    if (r.header.backupId !== f.header.backupId) {
      await r.close();
      throw new NbdsnapError('CORRUPT', `${f.path} was replaced while the restore ran`);
    }
    const win = new Window(8);
    try {
      for await (const rec of r.records()) {
        if (rec.type === RecordType.SMPL) continue;
        written += rec.length;
        await win.add(async () => {
          if (rec.type === RecordType.DATA) await target.write(rec.offset, rec.payload);
          else await target.zero(rec.offset, rec.length, rec.type === RecordType.DISC);
          progress.add(rec.length);
        });
      }
    } finally {
      await win.drain();
    }
    if (r.end?.sha256.toString('hex') !== f.sha256)
      throw new NbdsnapError('CORRUPT', `${f.path} changed while the restore ran`);
  }
  progress.finish();
  return written;
}
