/**
 * A chain of backup files: each one read completely and checked (reader.ts: every checksum, the
 * end marker, the record rules), then the chain's order by ids: one device and size, one
 * change-tracking generation, a full backup only first, and each incremental's FROM (name,
 * point, time) equal to the previous file's TO. Used by `verify` and, before it writes
 * anything, by `restore`.
 */
import { NbdsnapError } from '../errors.ts';
import type { BackupHeader, EndTotals } from './format.ts';
import type { Progress } from './progress.ts';
import { BackupReader, type Sample, sourceSize } from './reader.ts';

export interface ChainFile {
  path: string;
  header: BackupHeader;
  samples: Sample[];
  /** Ranges the file writes (merged), ascending. */
  ranges: [number, number][];
  totals: EndTotals;
  sha256: string;
  fileBytes: number;
}

/** Read and check one file completely. */
export async function loadFile(path: string): Promise<ChainFile> {
  const r = await BackupReader.open(path);
  const { samples, ranges } = await r.readAll();
  const end = r.end;
  if (end === undefined) throw new NbdsnapError('CORRUPT', `${path}: no end marker`);
  return {
    path,
    header: r.header,
    samples,
    ranges,
    totals: end.totals,
    sha256: end.sha256.toString('hex'),
    fileBytes: await sourceSize(path),
  };
}

export const describeSnap = (h: BackupHeader, which: 'to' | 'from'): string =>
  which === 'to'
    ? `${h.device}@${h.toName} (point ${h.toPoint})`
    : `${h.device}@${h.fromName} (point ${h.fromPoint === 0 ? 'unknown' : h.fromPoint})`;

/** The order and ids of a chain; throws one clear error for the first file that does not fit. */
export function checkChain(files: ChainFile[]): void {
  const seen = new Map<string, string>();
  for (const [i, f] of files.entries()) {
    const h = f.header;
    if (i > 0 && h.kind === 'full')
      throw new NbdsnapError('BAD_ARGUMENT', `${f.path} is a full backup: only the first file of a chain may be one`);
    const dup = seen.get(h.backupId);
    if (dup !== undefined) throw new NbdsnapError('BAD_ARGUMENT', `${f.path} is the same backup as ${dup}`);
    seen.set(h.backupId, f.path);
    const prev = files[i - 1];
    if (prev === undefined) continue;
    const p = prev.header;
    const not = `${f.path} does not follow ${prev.path}`;
    if (h.device !== p.device || h.deviceSize !== p.deviceSize)
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        `${not}: it is a backup of ${h.device} (${h.deviceSize} bytes), not ${p.device} (${p.deviceSize} bytes)`,
      );
    if (h.generation !== p.generation)
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        `${not}: change tracking was reset between them (generation ${p.generation || 'none'} -> ${h.generation})`,
      );
    const sameName = h.fromName === p.toName;
    const samePoint = h.fromPoint === 0 || h.fromPoint === p.toPoint;
    const sameTime = h.fromCreated === 0 || h.fromCreated === p.toCreated;
    if (!sameName || !samePoint || !sameTime)
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        `${not}: it is an incremental from ${describeSnap(h, 'from')}, but ${prev.path} holds ${describeSnap(p, 'to')}`,
      );
  }
}

/** Load every file (progress over their sizes), then check the chain. */
export async function loadChain(paths: string[], progress?: Progress): Promise<ChainFile[]> {
  if (paths.length === 0) throw new NbdsnapError('BAD_ARGUMENT', 'name at least one backup file');
  const sizes: number[] = [];
  for (const p of paths) sizes.push(await sourceSize(p));
  progress?.start(
    'verify',
    sizes.reduce((a, b) => a + b, 0),
  );
  const files: ChainFile[] = [];
  for (const [i, p] of paths.entries()) {
    files.push(await loadFile(p));
    progress?.add(sizes[i] as number);
  }
  checkChain(files);
  progress?.finish();
  return files;
}
