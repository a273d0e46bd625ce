/**
 * A dense block bit set with the query shape of `RunSet`: for an era so fragmented that its runs
 * would take more memory than one bit per block of the device. This bounds an era's memory by the
 * device size whatever the writes (the runs' worst case, every other block, would be 32 times a
 * bit set). Word arithmetic is by division, not shifts, so block numbers beyond 32 bits (4 KiB
 * blocks on a device over 16 TiB) index correctly.
 */
import type { BlockSet } from './runs.ts';

export class Bitset implements BlockSet {
  readonly limit: number;
  private readonly words: Uint32Array;

  /** Blocks 0 .. limit-1. */
  constructor(limit: number) {
    this.limit = limit;
    this.words = new Uint32Array(Math.ceil(limit / 32));
  }

  get bytes(): number {
    return this.words.byteLength;
  }

  has(block: number): boolean {
    if (block < 0 || block >= this.limit) return false;
    return ((this.words[Math.floor(block / 32)] as number) & (1 << (block % 32))) !== 0;
  }

  /** Add the blocks [start, end) (clipped to the limit). */
  add(start: number, end: number): void {
    const stop = Math.min(end, this.limit);
    for (let b = Math.max(0, start); b < stop; ) {
      const w = Math.floor(b / 32);
      if (b % 32 === 0 && stop - b >= 32) {
        this.words[w] = 0xffffffff;
        b += 32;
      } else {
        this.words[w] = (this.words[w] as number) | (1 << (b % 32));
        b++;
      }
    }
  }

  /** Append to `out` the runs inside [lo, hi), clipped to it, as start, end pairs. */
  collect(lo: number, hi: number, out: number[]): void {
    const stop = Math.min(hi, this.limit);
    let b = Math.max(0, lo);
    while (b < stop) {
      const word = this.words[Math.floor(b / 32)] as number;
      if (word === 0 && b % 32 === 0) {
        b += 32;
        continue;
      }
      if ((word & (1 << (b % 32))) === 0) {
        b++;
        continue;
      }
      const start = b;
      while (b < stop) {
        if (b % 32 === 0 && stop - b >= 32 && this.words[b / 32] === 0xffffffff) b += 32;
        else if (this.has(b)) b++;
        else break;
      }
      out.push(start, b);
    }
  }
}
