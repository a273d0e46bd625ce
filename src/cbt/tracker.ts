/**
 * Change-block tracking for one device, crash-safe in the dm-era way: the device is cut into
 * tracking blocks (64 KiB by default), and for each *era* (the span between two snapshots) a
 * run set (sorted block runs, `runs.ts`) records the blocks written in it, so memory follows the
 * blocks changed, not the device size, and a query over a range costs what the runs inside it
 * cost. Eras are snapshot sequence numbers: a write made
 * while the next snapshot to be taken will get sequence e belongs to era e, so the blocks that
 * changed between snapshots A and B are those written in some era e with A.seq < e <= B.seq,
 * and "since A" means every era after A.seq.
 *
 * Before the first write to a block in an era is let through, that (block, era) pair is
 * committed to the store's journal (`needs()` says which are new; the caller commits, then
 * `mark()`s). So an unclean shutdown never loses a change. The generation id changes whenever
 * the history is reset (a new device, another block size, or no persistent store): a consumer
 * holding an older generation must take a full backup.
 */
import { randomUUID } from 'node:crypto';
import { Bitset } from './bitset.ts';
import { compactEras } from './compact.ts';
import { type BlockRuns, type BlockSet, RunSet, unionOf } from './runs.ts';

/**
 * An era goes dense (a bit set) once its runs outnumber one per this many blocks: runs take 8 to
 * 16 bytes each (leaves half to fully used), a bit set one bit per block, so an era never takes
 * much more memory than a bit set of the device.
 */
const BLOCKS_PER_RUN_BEFORE_DENSE = 128;

export class CbtTracker {
  readonly blockSize: number;
  readonly blockCount: number;
  generation: string;
  private readonly eras = new Map<number, BlockSet>();

  constructor(deviceSize: number, blockSize: number, generation: string = randomUUID()) {
    this.blockSize = blockSize;
    this.blockCount = Math.ceil(deviceSize / blockSize);
    this.generation = generation;
  }

  /** Forget all history under a new generation id. */
  reset(generation: string = randomUUID()): void {
    this.eras.clear();
    this.generation = generation;
  }

  blocksOf(offset: number, length: number): [number, number] {
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / this.blockSize);
    return [first, last - first + 1];
  }

  /** Runs [first, count] of blocks in the range not yet marked in `era`. */
  needs(offset: number, length: number, era: number): [number, number][] {
    const [first, count] = this.blocksOf(offset, length);
    const marked: number[] = [];
    this.eras.get(era)?.collect(first, first + count, marked);
    const out: [number, number][] = [];
    let pos = first;
    for (let i = 0; i < marked.length; i += 2) {
      const start = marked[i] as number;
      if (start > pos) out.push([pos, start - pos]);
      pos = marked[i + 1] as number;
    }
    if (pos < first + count) out.push([pos, first + count - pos]);
    return out;
  }

  mark(era: number, first: number, count: number): void {
    const end = Math.min(first + count, this.blockCount);
    if (first >= end) return;
    let runs = this.eras.get(era);
    if (runs === undefined) {
      runs = new RunSet(this.blockCount);
      this.eras.set(era, runs);
    }
    runs.add(first, end);
    if (runs instanceof RunSet && runs.size * BLOCKS_PER_RUN_BEFORE_DENSE > this.blockCount) {
      const dense = new Bitset(this.blockCount);
      runs.each((start, stop) => dense.add(start, stop));
      this.eras.set(era, dense);
    }
  }

  /**
   * Blocks written in some era e with from < e <= to (to = Infinity: up to now), among the
   * blocks [first, first + count) (default: all), at the cost of the runs found there.
   */
  changed(
    from: number,
    to: number = Number.POSITIVE_INFINITY,
    first = 0,
    count: number = this.blockCount - first,
  ): BlockRuns {
    const sets: BlockSet[] = [];
    for (const [era, runs] of this.eras) if (era > from && era <= to) sets.push(runs);
    return unionOf(sets, first, Math.min(first + count, this.blockCount));
  }

  /**
   * After a snapshot point was forgotten: drop the eras no query between the remaining `points`
   * (seqs) can ask for, and merge those between two adjacent points (compact.ts). `nextSeq`: the
   * era of a write made now.
   */
  forget(points: readonly number[], nextSeq: number): void {
    compactEras(this.eras, points, nextSeq, this.blockCount, BLOCKS_PER_RUN_BEFORE_DENSE);
  }

  /**
   * Every era's blocks as maximal runs [era, start, end), era by era (in the order eras were
   * first marked), runs ascending: what a journal checkpoint records (CBT records). Reads a
   * window of blocks at a time, so the memory is one window's runs, not the era's.
   */
  *eraRuns(): IterableIterator<[number, number, number]> {
    const window = 1 << 20;
    const out: number[] = [];
    for (const [era, set] of this.eras) {
      let start = -1;
      let end = -1;
      for (let lo = 0; lo < this.blockCount; lo += window) {
        out.length = 0;
        set.collect(lo, Math.min(lo + window, this.blockCount), out);
        for (let i = 0; i < out.length; i += 2) {
          const a = out[i] as number;
          const b = out[i + 1] as number;
          if (a === end)
            end = b; // a run cut by the window's edge
          else {
            if (end > start) yield [era, start, end];
            start = a;
            end = b;
          }
        }
      }
      if (end > start) yield [era, start, end];
    }
  }

  /** Eras kept as runs and as bit sets, and the bytes of their storage: for measurements. */
  footprint(): { sparse: number; dense: number; bytes: number } {
    let sparse = 0;
    let bytes = 0;
    for (const set of this.eras.values()) {
      if (set instanceof RunSet) sparse++;
      bytes += set.bytes;
    }
    return { sparse, dense: this.eras.size - sparse, bytes };
  }
}
