/**
 * Backup planning at scale: sampling unchanged blocks counts the whole blocks of each clean
 * range instead of listing them, and picks the same blocks a listing would.
 */
import { describe, expect, it } from 'vitest';
import { chooseSamples, TrimPolicy } from '../../src/backup/plan.ts';

/** The listing it replaces: every whole block of every range, then an even choice. */
function listed(clean: [number, number][], blockSize: number, size: number, count: number) {
  const blocks: number[] = [];
  for (const [offset, length] of clean) {
    for (let b = Math.ceil(offset / blockSize); b * blockSize < offset + length; b++)
      if (Math.min(size, (b + 1) * blockSize) <= offset + length) blocks.push(b);
  }
  const n = Math.min(count, blocks.length);
  return Array.from({ length: n }, (_, i) => {
    const b = blocks[Math.floor(((i + 0.5) * blocks.length) / n)] as number;
    return { offset: b * blockSize, length: Math.min(size, (b + 1) * blockSize) - b * blockSize };
  });
}

describe('chooseSamples', () => {
  it('picks what a listing of every whole block picks', () => {
    let a = 7;
    const r = (n: number) => {
      a = (a * 1103515245 + 12345) % 2147483648;
      return Math.floor((a / 2147483648) * n);
    };
    for (let round = 0; round < 300; round++) {
      const bs = [512, 4096, 65536][round % 3] as number;
      const size = (1 + r(200)) * bs - (round % 2 === 0 ? r(bs) : 0); // often a short last block
      const clean: [number, number][] = [];
      for (let pos = r(3 * bs); pos < size; ) {
        const len = Math.min(size - pos, 1 + r(8 * bs));
        clean.push([pos, len]);
        pos += len + 1 + r(4 * bs);
      }
      for (const count of [0, 1, 3, 128]) {
        expect(chooseSamples(clean, bs, size, count), `round ${round}`).toEqual(listed(clean, bs, size, count));
      }
    }
  });

  it('samples a 15 TiB clean device without listing its 251,658,240 blocks', () => {
    const size = 15 * 2 ** 40;
    const s = chooseSamples([[0, size]], 65536, size, 128);
    expect(s).toHaveLength(128);
    expect(s[0]).toEqual({ offset: Math.floor((0.5 * 251658240) / 128) * 65536, length: 65536 });
    expect(s[127]).toEqual({ offset: Math.floor((127.5 * 251658240) / 128) * 65536, length: 65536 });
  });
});

describe('TrimPolicy', () => {
  const run = (p: TrimPolicy, pieces: number, keep: (i: number) => number): number => {
    let reads = 0;
    for (let i = 0; i < pieces; i++)
      if (p.wants()) {
        reads += 1;
        p.record(65536, keep(i));
      }
    return reads;
  };

  it('reads FROM for every piece while trimming pays', () => {
    expect(run(new TrimPolicy(), 1000, () => 4096)).toBe(1000);
  });

  it('reads FROM for one piece in PROBE_EVERY once whole blocks are rewritten, and again for all when trimming pays again', () => {
    const p = new TrimPolicy();
    const whole = run(p, 1000, () => 65536);
    const probes = Math.floor((1000 - TrimPolicy.WARMUP) / TrimPolicy.PROBE_EVERY);
    expect(whole).toBe(TrimPolicy.WARMUP + probes);
    // small writes again: the probes see it, and every piece is compared after a while
    run(p, 2000, () => 512);
    expect(run(p, 100, () => 512)).toBe(100);
  });
});
