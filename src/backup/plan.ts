/**
 * What a backup must hold, worked out from block status alone (pure, no I/O):
 * - `planRanges`: the `base:allocation` extents, intersected with the `qemu:dirty-bitmap:FROM`
 *   extents for an incremental, become items in device order: DATA pieces (at most PIECE bytes,
 *   never crossing a multiple of PIECE), ZERO ranges (ZERO flag) and DISC ranges (HOLE|ZERO);
 *   a HOLE without ZERO is read as data, since only ZERO promises zeroes. The clean (unchanged)
 *   ranges are kept for sampling.
 * - `chooseSamples`: a deterministic, evenly spread choice of whole unchanged tracking blocks.
 * - `trimUnchanged`: sheepdog's compaction, the first and last 512-byte sectors that differ.
 */
import { PIECE, SECTOR } from './format.ts';

/** A block status extent at an absolute offset. */
export interface AbsExtent {
  offset: number;
  length: number;
  flags: number;
}

export type ItemKind = 'data' | 'zero' | 'disc';
export interface PlanItem {
  kind: ItemKind;
  offset: number;
  length: number;
}

export interface Plan {
  items: PlanItem[];
  /** Unchanged ranges (incrementals only), ascending. */
  clean: [number, number][];
  /** Bytes the items cover. */
  totalBytes: number;
}

const HOLE = 1;
const ZERO = 2;

function kindOf(flags: number): ItemKind {
  if ((flags & (HOLE | ZERO)) === (HOLE | ZERO)) return 'disc';
  if ((flags & ZERO) !== 0) return 'zero';
  return 'data';
}

/** `dirty` undefined: a full backup, everything counts as changed. */
export function planRanges(size: number, allocation: AbsExtent[], dirty?: AbsExtent[]): Plan {
  const items: PlanItem[] = [];
  const clean: [number, number][] = [];
  let totalBytes = 0;
  const push = (kind: ItemKind, offset: number, length: number) => {
    totalBytes += length;
    const last = items[items.length - 1];
    if (kind !== 'data') {
      if (last !== undefined && last.kind === kind && last.offset + last.length === offset) last.length += length;
      else items.push({ kind, offset, length });
      return;
    }
    for (let pos = offset; pos < offset + length; ) {
      const end = Math.min(offset + length, (Math.floor(pos / PIECE) + 1) * PIECE);
      items.push({ kind, offset: pos, length: end - pos });
      pos = end;
    }
  };
  const all = dirty ?? [{ offset: 0, length: size, flags: 1 }];
  let a = 0;
  let d = 0;
  for (let pos = 0; pos < size; ) {
    while (a < allocation.length && end(allocation[a] as AbsExtent) <= pos) a++;
    while (d < all.length && end(all[d] as AbsExtent) <= pos) d++;
    const ae = allocation[a];
    const de = all[d];
    if (ae === undefined || de === undefined || ae.offset > pos || de.offset > pos)
      throw new Error(`block status does not cover byte ${pos}`);
    const stop = Math.min(end(ae), end(de), size);
    if ((de.flags & 1) !== 0) push(kindOf(ae.flags), pos, stop - pos);
    else {
      const last = clean[clean.length - 1];
      if (last !== undefined && last[0] + last[1] === pos) last[1] += stop - pos;
      else clean.push([pos, stop - pos]);
    }
    pos = stop;
  }
  return { items, clean, totalBytes };
}

const end = (e: AbsExtent): number => e.offset + e.length;

/**
 * Up to `count` whole tracking blocks from the clean ranges (the device's last, short block
 * counts as whole), evenly spread over all of them: the same inputs give the same samples.
 * The whole blocks of each range are counted, not listed: O(ranges + count x log ranges), however
 * large the clean ranges are.
 */
export function chooseSamples(
  clean: [number, number][],
  blockSize: number,
  size: number,
  count: number,
): { offset: number; length: number }[] {
  // Each range's whole blocks are [first, first + n): `firsts`, and `ends` the running totals.
  const firsts: number[] = [];
  const ends: number[] = [];
  let total = 0;
  for (const [offset, length] of clean) {
    const first = Math.ceil(offset / blockSize);
    const stop = offset + length;
    let hi = Math.floor(stop / blockSize);
    // The device's short last block, when the range reaches the end of the device.
    if (hi * blockSize < stop && Math.min(size, (hi + 1) * blockSize) <= stop) hi += 1;
    if (hi <= first) continue;
    firsts.push(first);
    total += hi - first;
    ends.push(total);
  }
  const n = Math.min(count, total);
  const out: { offset: number; length: number }[] = [];
  for (let i = 0; i < n; i++) {
    const k = Math.floor(((i + 0.5) * total) / n); // the k-th whole block of all the ranges
    let lo = 0;
    let hi = ends.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((ends[mid] as number) > k) hi = mid;
      else lo = mid + 1;
    }
    const b = (firsts[lo] as number) + k - (lo > 0 ? (ends[lo - 1] as number) : 0);
    out.push({ offset: b * blockSize, length: Math.min(size, (b + 1) * blockSize) - b * blockSize });
  }
  return out;
}

/**
 * The part of `now` (at device offset `offset`) that differs from `before`, trimmed to whole
 * sectors (device-aligned) at both ends; undefined when nothing differs.
 */
export function trimUnchanged(offset: number, now: Buffer, before: Buffer): { start: number; end: number } | undefined {
  if (now.equals(before)) return undefined;
  const sectorEnd = (i: number) => Math.min(now.length, (Math.floor((offset + i) / SECTOR) + 1) * SECTOR - offset);
  const same = (s: number, e: number) => now.subarray(s, e).equals(before.subarray(s, e));
  let start = 0;
  while (start < now.length && same(start, sectorEnd(start))) start = sectorEnd(start);
  // the last differing sector: walk back from the end, sector by sector
  let stop = now.length;
  for (;;) {
    const sStart = Math.max(start, Math.floor((offset + stop - 1) / SECTOR) * SECTOR - offset);
    if (!same(sStart, stop)) break;
    stop = sStart;
  }
  return { start, end: stop };
}

/**
 * Whether to read FROM for the next DATA piece, to trim it (`trimUnchanged` costs a read of FROM
 * as long as the piece): always for the first WARMUP pieces, then while trimming saves at least
 * an eighth of the bytes it reads from FROM, else for one piece in PROBE_EVERY, to notice when it
 * pays again. The counts are halved every DECAY bytes read, so a change of pattern is followed.
 * Whole-block rewrites (nothing to trim) then cost about 1/8 of their size in reads of FROM
 * instead of all of it; small writes inside larger blocks keep being trimmed. A piece left
 * untrimmed is still a valid record (the format does not require trimming).
 */
export class TrimPolicy {
  static readonly WARMUP = 16;
  static readonly PROBE_EVERY = 8;
  static readonly DECAY = 64 * 1024 * 1024;
  private read = 0;
  private saved = 0;
  private checked = 0;
  private skipped = 0;

  wants(): boolean {
    if (this.checked < TrimPolicy.WARMUP || this.saved * 8 >= this.read) return true;
    this.skipped += 1;
    return this.skipped % TrimPolicy.PROBE_EVERY === 0;
  }

  /** A piece of `length` bytes was compared with FROM, and `kept` of its bytes differ. */
  record(length: number, kept: number): void {
    this.checked += 1;
    this.read += length;
    this.saved += length - kept;
    if (this.read >= TrimPolicy.DECAY) {
      this.read /= 2;
      this.saved /= 2;
    }
  }
}
