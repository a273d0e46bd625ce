/**
 * The sparse change-tracking sets, without a server: `RunSet` (sorted runs in leaves), `unionOf`,
 * `CbtTracker` and the `qemu:dirty-bitmap` extents, each against a brute-force bit-array model
 * under thousands of random marks and range queries, including leaf splits, runs that span
 * leaves, block numbers beyond 32 bits, the last (short) block of a device and ranges that start
 * or end inside a block.
 */
import { describe, expect, it } from 'vitest';
import { Bitset } from '../../src/cbt/bitset.ts';
import { CbtControl, type CbtState } from '../../src/cbt/cbt-control.ts';
import { type BlockSet, RunSet, unionOf } from '../../src/cbt/runs.ts';
import { CbtTracker } from '../../src/cbt/tracker.ts';
import type { Extent } from '../../src/nbd-protocol/index.ts';
import { rngInt } from '../helpers/random.ts';

/** Runs of set bits of `bits` within [lo, hi), as start, end pairs, offset by `base`. */
function modelRuns(bits: Uint8Array, lo: number, hi: number, base = 0): number[] {
  const out: number[] = [];
  for (let b = lo; b < hi; b++) {
    if (bits[b] !== 1) continue;
    const start = b;
    while (b < hi && bits[b] === 1) b++;
    out.push(start + base, b + base);
  }
  return out;
}

function all(set: BlockSet, base = 0): number[] {
  const out: number[] = [];
  set.collect(base, base + 2 ** 40, out);
  return out;
}

/** A random run: mostly single blocks, sometimes long ones that swallow many runs. */
function randomRun(random: (n: number) => number, n: number): [number, number] {
  const start = random(n);
  const kind = random(20);
  const length = kind === 0 ? 1 + random(n) : kind < 4 ? 1 + random(8) : 1;
  return [start, Math.min(n, start + length)];
}

describe('RunSet and Bitset against a bit array', () => {
  for (const [label, base, make] of [
    ['runs, 32-bit block numbers', 0, (limit: number): BlockSet => new RunSet(limit)],
    ['runs, block numbers beyond 32 bits', 2 ** 33 + 7, (limit: number): BlockSet => new RunSet(limit)],
    ['dense', 0, (limit: number): BlockSet => new Bitset(limit)],
  ] as const) {
    it(`adds, queries and keeps runs sorted, disjoint and apart (${label})`, () => {
      let cases = 0;
      for (let seed = 1; seed <= 16; seed++) {
        const random = rngInt(seed);
        const n = [10, 100, 3000, 5000][seed % 4] as number;
        const bits = new Uint8Array(n);
        const set = make(base + n);
        const adds = n < 1000 ? 50 : 2500;
        for (let k = 0; k < adds; k++) {
          const [start, end] = randomRun(random, n);
          set.add(start + base, end + base);
          bits.fill(1, start, end);
          if (k % 97 === 0 || k === adds - 1) {
            const runs = all(set, base);
            expect(runs).toEqual(modelRuns(bits, 0, n, base));
            if (set instanceof RunSet) expect(set.size).toBe(runs.length / 2);
            for (let i = 2; i < runs.length; i += 2) expect(runs[i]).toBeGreaterThan(runs[i - 1] as number);
          }
          for (let q = 0; q < 3; q++) {
            const lo = random(n + 1);
            const hi = lo + random(n + 1 - lo);
            const out: number[] = [];
            set.collect(lo + base, hi + base, out);
            expect(out).toEqual(modelRuns(bits, lo, hi, base));
            const b = random(n);
            expect(set.has(b + base)).toBe(bits[b] === 1);
            cases++;
          }
        }
        expect(set.has(base - 1)).toBe(false);
        expect(set.has(base + n)).toBe(false);
      }
      expect(cases).toBeGreaterThan(10_000);
    });
  }

  it('splits full leaves and merges runs across them', () => {
    const set = new RunSet(100_000);
    for (let b = 0; b < 40_000; b += 2) set.add(b, b + 1); // 20,000 runs: many leaves
    expect(set.size).toBe(20_000);
    set.add(1001, 30_001); // swallows runs of many leaves
    const expected = [...modelRunsOf(0, 1000, 2), 1000, 30_001, ...modelRunsOf(30_002, 40_000, 2)];
    expect(all(set)).toEqual(expected);
    set.add(0, 100_000);
    expect(all(set)).toEqual([0, 100_000]);
    expect(set.size).toBe(1);
  });

  it('ignores empty runs and answers nothing on an empty set', () => {
    const set = new RunSet(10);
    set.add(5, 5);
    expect(set.size).toBe(0);
    expect(set.has(5)).toBe(false);
    expect(all(set)).toEqual([]);
  });
});

function modelRunsOf(from: number, to: number, step: number): number[] {
  const out: number[] = [];
  for (let b = from; b < to; b += step) out.push(b, b + 1);
  return out;
}

describe('unionOf against a bit array', () => {
  it('is the OR of the sets inside the requested range', () => {
    for (let seed = 1; seed <= 60; seed++) {
      const random = rngInt(1000 + seed);
      const n = 1 + random(2000);
      const k = random(8);
      const models = Array.from({ length: k }, () => new Uint8Array(n));
      const sets = models.map(() => new RunSet(n));
      for (let i = 0; i < k * 150; i++) {
        const e = random(k);
        const [start, end] = randomRun(random, n);
        sets[e]?.add(start, end);
        models[e]?.fill(1, start, end);
      }
      const or = new Uint8Array(n);
      for (const m of models) for (let b = 0; b < n; b++) if (m[b] === 1) or[b] = 1;
      for (let q = 0; q < 50; q++) {
        const lo = random(n + 1);
        const hi = lo + random(n + 1 - lo);
        const u = unionOf(sets, lo, hi);
        const got: number[] = [];
        for (const [first, count] of u.runs()) got.push(first, first + count);
        expect(got).toEqual(modelRuns(or, lo, hi));
        const b = random(n);
        expect(u.has(b)).toBe(b >= lo && b < hi && or[b] === 1);
      }
    }
  });
});

describe('CbtTracker and dirty-bitmap extents against a model', () => {
  const BS = 4096;

  /** The model's extents: one step per block, as the dense version answered. */
  function modelExtents(changed: Uint8Array, size: number, offset: number, length: number): Extent[] {
    const end = Math.min(size, offset + length);
    const out: Extent[] = [];
    for (let pos = offset; pos < end; ) {
      const block = Math.floor(pos / BS);
      const blockEnd = Math.min(end, (block + 1) * BS);
      const flags = changed[block] === 1 ? 1 : 0;
      const last = out[out.length - 1];
      if (last !== undefined && last.flags === flags) last.length += blockEnd - pos;
      else out.push({ length: blockEnd - pos, flags });
      pos = blockEnd;
    }
    return out;
  }

  it('needs, marks, changed and dirty-bitmap extents match, up to the short last block', async () => {
    let cases = 0;
    for (let seed = 1; seed <= 30; seed++) {
      const random = rngInt(5000 + seed);
      // Small devices go dense after a few runs, larger ones stay sparse; most end inside a block.
      const size = 1 + random((seed % 2 === 0 ? 300 : 30_000) * BS);
      const tracker = new CbtTracker(size, BS, 'gen');
      const blocks = tracker.blockCount;
      const eras = 1 + random(6);
      const model = Array.from({ length: eras + 1 }, () => new Uint8Array(blocks));
      const state: CbtState = {
        trackers: new Map([[1, tracker]]),
        bookmarks: new Map([[1, new Map(Array.from({ length: eras + 1 }, (_, s) => [`s${s}`, s]))]]),
        nextSeq: eras + 1,
      };
      const control = new CbtControl(state, { record: async () => undefined }, true);
      await control.add('dev', 1, size, BS);
      for (let w = 0; w < 200; w++) {
        const era = 1 + random(eras);
        const offset = random(size);
        const length = 1 + random(Math.min(size - offset, 8 * BS));
        const needs = tracker.needs(offset, length, era);
        const [first, count] = tracker.blocksOf(offset, length);
        const expected: [number, number][] = [];
        for (const [s, e] of pairs(
          modelRuns(invert(model[era] as Uint8Array, first, first + count), first, first + count),
        ))
          expected.push([s, e - s]);
        expect(needs).toEqual(expected);
        for (const [b, c] of needs) tracker.mark(era, b, c);
        (model[era] as Uint8Array).fill(1, first, first + count);
        if (random(10) === 0) {
          tracker.mark(era, blocks - 1, 5); // runs past the end: clipped to the last block
          (model[era] as Uint8Array).fill(1, blocks - 1, blocks);
        }
      }
      for (let q = 0; q < 40; q++) {
        const from = random(eras);
        const to = from + 1 + random(eras - from);
        const changed = new Uint8Array(blocks);
        for (let e = from + 1; e <= to; e++) for (let b = 0; b < blocks; b++) if (model[e]?.[b] === 1) changed[b] = 1;
        const first = random(blocks);
        const count = random(blocks - first + 3); // may run past the end
        const got: number[] = [];
        for (const [f, c] of tracker.changed(from, to, first, count).runs()) got.push(f, f + c);
        expect(got).toEqual(modelRuns(changed, first, Math.min(blocks, first + count)));
        const context = control.dirtyContexts('dev', to).find((c) => c.name.endsWith(`:s${from}`));
        const offset = random(size);
        const length = 1 + random(size - offset + BS);
        expect(await context?.extents(offset, length)).toEqual(modelExtents(changed, size, offset, length));
        const ranges = control.changed('dev', `s${from}`, `s${to}`).ranges;
        expect(ranges.reduce((n, r) => n + r.length, 0)).toBe(
          modelExtents(changed, size, 0, size).reduce((n, e) => n + (e.flags === 1 ? e.length : 0), 0),
        );
        cases++;
      }
    }
    expect(cases).toBe(1200);
  });

  it('keeps a fragmented era as a bit set, with the same answers', () => {
    const tracker = new CbtTracker(100_000 * BS, BS, 'gen');
    for (let b = 0; b < 1000; b += 2) tracker.mark(1, b, 1);
    tracker.mark(2, 5, 1);
    expect(tracker.footprint()).toMatchObject({ sparse: 2, dense: 0 });
    for (let b = 1000; b < 1600; b += 2) tracker.mark(1, b, 1); // 800 runs: over 100,000 / 128
    expect(tracker.footprint()).toMatchObject({ sparse: 1, dense: 1, bytes: expect.any(Number) });
    expect(tracker.footprint().bytes).toBeLessThan(2 * (100_000 / 8));
    tracker.mark(1, 99_999, 10);
    const runs = [...tracker.changed(0).runs()];
    expect(runs.length).toBe(800);
    expect(runs[0]).toEqual([0, 1]);
    expect(runs[2]).toEqual([4, 3]); // era 2's block 5 joins era 1's 4 and 6
    expect(runs[runs.length - 1]).toEqual([99_999, 1]);
    expect(tracker.needs(0, 4 * BS, 1)).toEqual([
      [1, 1],
      [3, 1],
    ]);
  });
});

function invert(bits: Uint8Array, lo: number, hi: number): Uint8Array {
  const out = new Uint8Array(bits.length);
  for (let b = lo; b < hi; b++) out[b] = bits[b] === 1 ? 0 : 1;
  return out;
}

function pairs(flat: number[]): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i] as number, flat[i + 1] as number]);
  return out;
}
