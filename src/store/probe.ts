/**
 * What a range holds, read before anything is written to it: a label (ours), a recognised
 * signature, data, or nothing at all ("blank": the whole range reads as zeros, not merely "no
 * magic"). Only a blank range may be formatted without the user's explicit `store format`.
 *
 * The zero check visits only the data extents of a regular file (SEEK_DATA / SEEK_HOLE through
 * the native helper), so a new sparse file costs nothing; without the helper it reads the whole
 * range. A block device range is read whole up to BLOCK_CHECK_LIMIT; a larger one that carries no
 * label is "unchecked" and must be formatted explicitly.
 */
import { closeSync, constants, fstatSync, openSync, read } from 'node:fs';
import { promisify } from 'node:util';
import { native } from '../block/native.ts';
import { errorMessage, NbdsnapError } from '../errors.ts';
import { probeRemoteRange } from '../remote/remote-probe.ts';
import { isRemote } from '../remote/uri.ts';
import { decodeLabelArea, LABEL_AREA, type Label, rangeSpec } from './label.ts';
import { findSignature, SIGNATURE_BYTES, type Signature } from './signatures.ts';
import type { StoreRange } from './space.ts';
import { versionMessage } from './superblock.ts';

const readAsync = promisify(read);

/** Largest block-device range read whole to prove it blank. */
export const BLOCK_CHECK_LIMIT = 4 * 1024 * 1024 * 1024;
const STEP = 1024 * 1024;
const ZEROES = Buffer.alloc(STEP);

export type RangeContent =
  | { kind: 'blank' }
  | { kind: 'label'; label: Label }
  | { kind: 'unreadable'; why: string }
  | { kind: 'version'; version: number }
  | { kind: 'signature'; signature: Signature }
  | { kind: 'data' }
  /** A block device range above BLOCK_CHECK_LIMIT with no label: not proven blank. */
  | { kind: 'unchecked' };

/** Read what `range` holds. Opens its file read-only; writes nothing. */
export async function probeRange(range: StoreRange): Promise<RangeContent> {
  if (isRemote(range.path)) return probeRemoteRange(range, judgeHead);
  let fd: number;
  try {
    fd = openSync(range.path, constants.O_RDONLY);
  } catch (err) {
    throw new NbdsnapError('NOT_FOUND', `store range ${rangeSpec(range)}: ${errorMessage(err)}`);
  }
  try {
    const head = await readAt(fd, range.start, Math.min(range.length, SIGNATURE_BYTES));
    const judged = judgeHead(head);
    if (judged !== undefined) return judged;
    const zero = await allZero(fd, range.start, range.length);
    return zero === undefined ? { kind: 'unchecked' } : zero ? { kind: 'blank' } : { kind: 'data' };
  } finally {
    closeSync(fd);
  }
}

/**
 * What the first bytes of a range say: a label, a signature, an unreadable label; undefined when
 * they say nothing (then only a zero check tells blank from data).
 */
export function judgeHead(head: Buffer): RangeContent | undefined {
  const label = decodeLabelArea(head.subarray(0, Math.min(head.length, LABEL_AREA)));
  if (label.state === 'valid') return { kind: 'label', label: label.label };
  if (label.state === 'version') return { kind: 'version', version: label.version };
  if (label.state === 'unreadable') return { kind: 'unreadable', why: label.why };
  const signature = findSignature(head);
  if (signature?.type === 'nbdsnap') return { kind: 'unreadable', why: signature.what };
  if (signature !== undefined) return { kind: 'signature', signature };
  return undefined;
}

/** Whether [start, start + length) of `fd` reads as zeros; undefined: too large to check. */
async function allZero(fd: number, start: number, length: number): Promise<boolean | undefined> {
  const end = start + length;
  if (fstatSync(fd).isBlockDevice()) return length > BLOCK_CHECK_LIMIT ? undefined : zeroRead(fd, start, end);
  if (native === undefined) return zeroRead(fd, start, end);
  for (let pos = start; pos < end; ) {
    const data = native.seekData(fd, pos);
    if (data < 0 || data >= end) return true;
    const hole = native.seekHole(fd, data);
    const until = hole < 0 ? end : Math.min(hole, end);
    if (!(await zeroRead(fd, data, until))) return false;
    pos = until;
  }
  return true;
}

/** Read [from, to) in steps, stopping at the first non-zero byte. */
async function zeroRead(fd: number, from: number, to: number): Promise<boolean> {
  for (let pos = from; pos < to; pos += STEP) {
    const n = Math.min(STEP, to - pos);
    const buf = await readAt(fd, pos, n);
    if (buf.length < n) return buf.equals(ZEROES.subarray(0, buf.length)); // past the end reads as nothing
    if (!buf.equals(ZEROES.subarray(0, n))) return false;
  }
  return true;
}

async function readAt(fd: number, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await readAsync(fd, buf, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buf.subarray(0, done);
}

/** What a range holds, for messages: "an ext2/3/4 filesystem", "data", "store U (its range 2)". */
export function describeContent(c: RangeContent): string {
  switch (c.kind) {
    case 'blank':
      return 'nothing (it reads as zeros)';
    case 'label':
      return `the label of ${c.label.kind} store ${c.label.uuid} (its range ${c.label.index})`;
    case 'unreadable':
      return `a store label that is unreadable (${c.why})`;
    case 'version':
      return `a store of format version ${c.version}`;
    case 'signature':
      return c.signature.what;
    case 'data':
      return 'data but no store label';
    case 'unchecked':
      return 'no store label (a block device range over 4 GiB, or a remote one without zero block status, is not read whole to prove it blank)';
  }
}

/**
 * The one-line refusal for a range that is neither blank nor a usable label here: unreadable
 * labels, other format versions, signatures, data. `undefined` for blank and labelled ranges (the
 * open rules decide about those). `adding`: the range was to join an existing store, which only a
 * blank range may do (`store format` makes a new store, so it is not the way out there).
 */
export function refuseContent(range: StoreRange, c: RangeContent, adding = false): NbdsnapError | undefined {
  const spec = rangeSpec(range);
  const format = `to make it a new store (destroying what it holds): nbdsnap store format ${spec}`;
  const blankOnly = 'only a blank range (all zeros) can be added to a store';
  switch (c.kind) {
    case 'blank':
    case 'label':
      return undefined;
    case 'unreadable':
      return new NbdsnapError(
        'CORRUPT',
        `store range ${spec}: the store's label is unreadable (${c.why}); refusing to use or reformat it`,
      );
    case 'version':
      return new NbdsnapError('BAD_CONFIG', `store range ${spec}: ${versionMessage(c.version)}`);
    case 'signature':
      return new NbdsnapError(
        'EXISTS',
        `store range ${spec} holds ${c.signature.what}; refusing to use it (${adding ? blankOnly : `${format} --force`})`,
      );
    case 'data':
      return new NbdsnapError(
        'EXISTS',
        `store range ${spec} is not blank: it holds data but no store label; refusing to use it (${adding ? blankOnly : format})`,
      );
    case 'unchecked':
      return new NbdsnapError(
        'EXISTS',
        `store range ${spec} carries no store label and, as a block device range over 4 GiB, is not read whole to prove it blank; ${adding ? 'it cannot be added to a store' : format}`,
      );
  }
}
