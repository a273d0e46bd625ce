/**
 * The undo journal of a restore (LVM's `pvcreate --undo` idea) and `restore --undo`.
 *
 * Before a restore writes anything, the old contents of every range it will write go to the
 * journal (same record format as backups, magic NBDSNAPU): HEAD, then one DATA or ZERO record
 * per piece (at most 1 MiB, never crossing a multiple of 1 MiB), then MARK; fsync file and
 * directory; only then does the restore write. When it is done, one HASH record per piece
 * (SHA-256 of what the piece now holds) and END.
 *
 * Undo checks, before it writes, that every piece holds what the restore left (its HASH) or
 * already the old contents (an undo that was itself interrupted); anything else means the target
 * changed since the restore, and undo refuses. A journal without HASH records (the restore was
 * interrupted while writing) cannot prove that, so undo needs --force then. Undo writes the old
 * contents back, and shrinks or removes a file the restore grew or created.
 */
import { createHash } from 'node:crypto';
import { truncateSync, unlinkSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { errorMessage, NbdsnapError } from '../errors.ts';
import {
  decodeJournalHeader,
  encodeJournalHeader,
  JOURNAL_MAGIC,
  type JournalHeader,
  PIECE,
  RecordType,
} from './format.ts';
import { orderedMap, Window } from './pipeline.ts';
import { Progress } from './progress.ts';
import { RecordReader } from './reader.ts';
import { inRanges, openTarget, probeTarget, type Target, zeroRanges } from './target.ts';
import { RecordWriter, syncDir } from './writer.ts';

export interface Piece {
  offset: number;
  length: number;
}

const ZEROES = Buffer.alloc(PIECE);
const isZero = (b: Buffer): boolean => b.equals(ZEROES.subarray(0, b.length));
const sha = (b: Buffer): Buffer => createHash('sha256').update(b).digest();
const EMPTY = Buffer.alloc(0);

/** The union of several files' ranges, cut into journal pieces. */
export function journalPieces(rangeLists: [number, number][][]): Piece[] {
  const all = rangeLists.flat().sort((a, b) => a[0] - b[0]);
  const merged: [number, number][] = [];
  for (const [o, l] of all) {
    const last = merged[merged.length - 1];
    if (last !== undefined && o <= last[0] + last[1]) last[1] = Math.max(last[1], o + l - last[0]);
    else merged.push([o, l]);
  }
  const out: Piece[] = [];
  for (const [o, l] of merged) {
    for (let pos = o; pos < o + l; ) {
      const end = Math.min(o + l, (Math.floor(pos / PIECE) + 1) * PIECE);
      out.push({ offset: pos, length: end - pos });
      pos = end;
    }
  }
  return out;
}

export class UndoJournal {
  readonly path: string;
  private readonly w: RecordWriter;
  private readonly pieces: Piece[];

  private constructor(path: string, w: RecordWriter, pieces: Piece[]) {
    this.path = path;
    this.w = w;
    this.pieces = pieces;
  }

  /** Save the old contents of every piece, durably. Bytes at or past `header.sizeBefore` are not read. */
  static async prepare(path: string, header: JournalHeader, target: Target, pieces: Piece[]): Promise<UndoJournal> {
    const w = await RecordWriter.create(path, JOURNAL_MAGIC);
    try {
      await w.add({
        type: RecordType.HEAD,
        offset: 0,
        length: header.sizeAfter,
        payload: encodeJournalHeader(header),
      });
      // past the old end, or reported as zeroes: nothing to read
      const zeroes = await zeroRanges(target);
      const readOld = async (p: Piece) =>
        p.offset >= header.sizeBefore || inRanges(zeroes, p.offset, p.length)
          ? { p, data: undefined }
          : { p, data: await target.read(p.offset, p.length) };
      for await (const { p, data } of orderedMap(pieces, 8, readOld)) {
        const zero = data === undefined || isZero(data);
        await w.add({
          type: zero ? RecordType.ZERO : RecordType.DATA,
          offset: p.offset,
          length: p.length,
          payload: zero ? EMPTY : (data as Buffer),
        });
      }
      await w.add({ type: RecordType.MARK, offset: 0, length: 0, payload: EMPTY });
      await w.sync();
      await syncDir(dirname(resolve(path)));
    } catch (err) {
      await w.close();
      throw err;
    }
    return new UndoJournal(path, w, pieces);
  }

  /** After the restore: the hash of what every piece now holds, then the end marker. */
  async complete(target: Target): Promise<void> {
    const zeroes = await zeroRanges(target);
    const readNew = async (p: Piece) => ({
      p,
      hash: inRanges(zeroes, p.offset, p.length) ? zeroHash(p.length) : sha(await target.read(p.offset, p.length)),
    });
    for await (const { p, hash } of orderedMap(this.pieces, 8, readNew))
      await this.w.add({ type: RecordType.HASH, offset: p.offset, length: p.length, payload: hash });
    await this.w.end();
  }

  close(): Promise<void> {
    return this.w.close();
  }
}

interface JournalPiece extends Piece {
  oldHash: Buffer;
  newHash: Buffer | undefined;
}

interface ReadJournal {
  header: JournalHeader;
  pieces: JournalPiece[];
  /** Every HASH record and the end marker are there and intact. */
  complete: boolean;
  /** Why not complete. */
  reason: string;
}

const zeroHashes = new Map<number, Buffer>();
const zeroHash = (n: number): Buffer => {
  let h = zeroHashes.get(n);
  if (h === undefined) {
    h = sha(Buffer.alloc(n));
    zeroHashes.set(n, h);
  }
  return h;
};

/** Read a journal: the old contents must be intact; the HASH section may be missing. */
async function readJournal(path: string, visit?: (offset: number, old: Buffer | undefined) => Promise<void>) {
  const r = await RecordReader.open(path, JOURNAL_MAGIC, 'an nbdsnap undo journal (bad magic)');
  const pieces: JournalPiece[] = [];
  let header: JournalHeader | undefined;
  let marked = false;
  let hashes = 0;
  const result = (complete: boolean, reason: string): ReadJournal => {
    if (header === undefined) throw new NbdsnapError('CORRUPT', `${path}: no journal header`);
    return { header, pieces, complete, reason };
  };
  try {
    for (;;) {
      let rec: Awaited<ReturnType<RecordReader['next']>>;
      try {
        rec = await r.next();
      } catch (err) {
        // cut short before MARK: the restore wrote nothing; after it: it stopped while writing
        if (!marked && /truncated/.test(errorMessage(err))) return result(false, 'no MARK');
        if (!marked) throw err;
        return result(false, errorMessage(err));
      }
      if (rec === undefined) break;
      const bad = (what: string) => new NbdsnapError('CORRUPT', `${path}: ${what} (at byte ${rec?.at})`);
      if (header === undefined) {
        if (rec.type !== RecordType.HEAD) throw bad('the first record is not a journal header');
        header = decodeJournalHeader(rec.payload);
      } else if (!marked && (rec.type === RecordType.DATA || rec.type === RecordType.ZERO)) {
        const prev = pieces[pieces.length - 1];
        if (rec.length === 0 || rec.length > PIECE || (prev !== undefined && rec.offset < prev.offset + prev.length))
          throw bad('old-contents records out of order');
        const old = rec.type === RecordType.DATA ? rec.payload : undefined;
        if (old !== undefined && old.length !== rec.length) throw bad('record length');
        pieces.push({
          offset: rec.offset,
          length: rec.length,
          oldHash: old ? sha(old) : zeroHash(rec.length),
          newHash: undefined,
        });
        await visit?.(rec.offset, old);
      } else if (!marked && rec.type === RecordType.MARK) {
        marked = true;
        if (visit !== undefined) break;
      } else if (marked && rec.type === RecordType.HASH) {
        const p = pieces[hashes++];
        if (p === undefined || p.offset !== rec.offset || p.length !== rec.length || rec.payload.length !== 32)
          throw bad('HASH records do not match the old-contents records');
        p.newHash = rec.payload;
      } else throw bad(`unexpected ${rec.type} record`);
    }
  } finally {
    await r.close();
  }
  if (!marked) return result(false, 'no MARK');
  if (visit === undefined && hashes !== pieces.length) return result(false, 'HASH records missing');
  return result(true, '');
}

export interface UndoOptions {
  journal: string;
  target: string;
  /** Undo a journal whose restore was interrupted, without the "target changed" check. */
  force?: boolean | undefined;
  progress?: Progress | undefined;
}

export interface UndoResult {
  pieces: number;
  restoredBytes: number;
  alreadyOld: number;
  removed: boolean;
}

export async function undo(opts: UndoOptions): Promise<UndoResult> {
  const progress = opts.progress ?? new Progress('none');
  const j = await readJournal(opts.journal);
  const h = j.header;
  if (j.reason === 'no MARK')
    throw new NbdsnapError(
      'BAD_ARGUMENT',
      `${opts.journal}: the restore stopped before writing anything; nothing to undo`,
    );
  if (!j.complete && opts.force !== true)
    throw new NbdsnapError(
      'BAD_ARGUMENT',
      `${opts.journal}: the restore did not finish (${j.reason}), so the target cannot be checked for later ` +
        'changes; pass --force to put the old contents back anyway',
    );
  const info = await probeTarget(opts.target);
  if (info.kind === 'missing') throw new NbdsnapError('NOT_FOUND', `target ${opts.target} does not exist`);
  if (info.size !== h.sizeAfter)
    throw new NbdsnapError(
      'BAD_ARGUMENT',
      `target ${opts.target} is ${info.size} bytes, the restore left ${h.sizeAfter}: it changed since, or is another target`,
    );
  const target = await openTarget(info, h.sizeAfter);
  const todo = new Set<number>();
  let alreadyOld = 0;
  try {
    progress.start(
      'undo-check',
      j.pieces.reduce((n, p) => n + p.length, 0),
    );
    const zeroes = await zeroRanges(target);
    const hashNow = async (p: JournalPiece) => ({
      p,
      now: inRanges(zeroes, p.offset, p.length) ? zeroHash(p.length) : sha(await target.read(p.offset, p.length)),
    });
    for await (const { p, now } of orderedMap(j.pieces, 8, hashNow)) {
      progress.add(p.length);
      if (now.equals(p.oldHash)) {
        alreadyOld++;
        continue;
      }
      if (j.complete && !now.equals(p.newHash as Buffer) && opts.force !== true)
        throw new NbdsnapError(
          'BAD_ARGUMENT',
          `target ${opts.target} changed since the restore (bytes [${p.offset}, +${p.length}) hold neither what the ` +
            'restore wrote nor the old contents); not undone',
        );
      todo.add(p.offset);
    }
    progress.finish();
    // a file the restore created is removed below: nothing to write back into it
    if (info.kind === 'file' && h.created) todo.clear();
    let restoredBytes = 0;
    const win = new Window(8);
    progress.start(
      'undo',
      j.pieces.filter((p) => todo.has(p.offset)).reduce((n, p) => n + p.length, 0),
    );
    const byOffset = new Map(j.pieces.map((p) => [p.offset, p]));
    await readJournal(opts.journal, async (offset, old) => {
      if (!todo.has(offset)) return;
      const p = byOffset.get(offset) as JournalPiece;
      restoredBytes += p.length;
      await win.add(async () => {
        if (old === undefined) await target.zero(p.offset, p.length, true);
        else await target.write(p.offset, old);
        progress.add(p.length);
      });
    });
    await win.drain();
    await target.flush();
    progress.finish();
    await target.close();
    let removed = false;
    if (info.kind === 'file' && h.created) {
      unlinkSync(opts.target);
      removed = true;
    } else if (info.kind === 'file' && h.sizeBefore < h.sizeAfter) truncateSync(opts.target, h.sizeBefore);
    return { pieces: j.pieces.length, restoredBytes, alreadyOld, removed };
  } finally {
    await target.close().catch(() => undefined);
  }
}
