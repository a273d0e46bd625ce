/**
 * Change-block tracking for one device, crash-safe in the dm-era way: the device is cut into
 * tracking blocks (64 KiB by default), and for each *era* (the span between two snapshots) a
 * bit set records the blocks written in it. Eras are snapshot sequence numbers: a write made
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

export class CbtTracker {
  readonly blockSize: number;
  readonly blockCount: number;
  generation: string;
  private readonly eras = new Map<number, Bitset>();

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
    const bits = this.eras.get(era);
    const out: [number, number][] = [];
    for (let b = first; b < first + count; b++) {
      if (bits?.has(b) === true) continue;
      const last = out[out.length - 1];
      if (last !== undefined && last[0] + last[1] === b) last[1] += 1;
      else out.push([b, 1]);
    }
    return out;
  }

  mark(era: number, first: number, count: number): void {
    let bits = this.eras.get(era);
    if (bits === undefined) {
      bits = new Bitset(this.blockCount);
      this.eras.set(era, bits);
    }
    for (let b = first; b < first + count && b < this.blockCount; b++) bits.set(b);
  }

  /** Blocks written in some era e with from < e <= to (to = Infinity: up to now). */
  changed(from: number, to: number = Number.POSITIVE_INFINITY): Bitset {
    const out = new Bitset(this.blockCount);
    for (const [era, bits] of this.eras) if (era > from && era <= to) out.or(bits);
    return out;
  }
}
