/**
 * Forgetting snapshot points, without a server: `compactEras` drops the eras at or before the
 * oldest remaining point, merges those between two adjacent points into the later one, and leaves
 * the eras after the newest point alone; `CbtTracker.forget` does it on a tracker. Boundaries
 * (first and last block, a short last block, dense eras, sparse merged with dense), then a model
 * check: for random histories of marks, snapshots, deletes and forgets, every query between
 * remaining points (and up to now) over random ranges answers as a tracker that never forgot.
 */
import { describe, expect, it } from 'vitest';
import { Bitset } from '../../src/cbt/bitset.ts';
import { compactEras, mergeSets } from '../../src/cbt/compact.ts';
import { type BlockSet, RunSet } from '../../src/cbt/runs.ts';
import { CbtTracker } from '../../src/cbt/tracker.ts';
import { rngInt } from '../helpers/random.ts';

function runsOf(set: BlockSet, limit: number): number[] {
  const out: number[] = [];
  set.collect(0, limit, out);
  return out;
}

function runSet(limit: number, ...runs: [number, number][]): RunSet {
  const s = new RunSet(limit);
  for (const [a, b] of runs) s.add(a, b);
  return s;
}

/** Every changed run of `t` between `from` and `to` over [first, first + count), as pairs. */
function query(t: CbtTracker, from: number, to: number, first?: number, count?: number): number[] {
  const r = t.changed(from, to, first, count);
  const out: number[] = [];
  for (let i = 0; i < r.length; i++) out.push(r.start(i), r.end(i));
  return out;
}

describe('compactEras', () => {
  const L = 100;
  const eras = () =>
    new Map<number, BlockSet>([
      [1, runSet(L, [0, 1])],
      [2, runSet(L, [1, 2])],
      [3, runSet(L, [2, 3])],
      [4, runSet(L, [10, 12])],
      [5, runSet(L, [12, 13])],
      [6, runSet(L, [50, 51])],
      [7, runSet(L, [98, 100])],
      [8, runSet(L, [0, 100])],
    ]);

  it('drops the eras up to the oldest point, merges each interval into its later point, keeps the rest', () => {
    const m = eras();
    compactEras(m, [6, 3], 8, L, 128);
    expect([...m.keys()].sort((a, b) => a - b)).toEqual([6, 7, 8]);
    expect(runsOf(m.get(6) as BlockSet, L)).toEqual([10, 13, 50, 51]);
    expect(runsOf(m.get(7) as BlockSet, L)).toEqual([98, 100]);
    expect(runsOf(m.get(8) as BlockSet, L)).toEqual([0, 100]);
  });

  it('moves a lone era of an interval to the interval end; an empty interval gets no era', () => {
    const m = new Map<number, BlockSet>([
      [5, runSet(L, [3, 4])],
      [9, runSet(L, [7, 8])],
    ]);
    compactEras(m, [2, 4, 7, 9], 10, L, 128);
    expect([...m.keys()].sort((a, b) => a - b)).toEqual([7, 9]);
    expect(runsOf(m.get(7) as BlockSet, L)).toEqual([3, 4]);
  });

  it('with no point left, drops every era before the next snapshot and keeps the current one', () => {
    const m = eras();
    compactEras(m, [], 8, L, 128);
    expect([...m.keys()]).toEqual([8]);
  });

  it('duplicated points and a single point', () => {
    const m = eras();
    compactEras(m, [5, 5, 5], 8, L, 128);
    expect([...m.keys()].sort((a, b) => a - b)).toEqual([6, 7, 8]);
    expect(runsOf(m.get(6) as BlockSet, L)).toEqual([50, 51]);
  });
});

describe('mergeSets', () => {
  it('merges sparse into dense, at the first and last block, with no loss', () => {
    const limit = 1000;
    const dense = new Bitset(limit);
    for (let b = 1; b < 40; b += 2) dense.add(b, b + 1);
    const sparse = runSet(limit, [0, 1], [2, 40], [999, 1000], [500, 520]);
    const merged = mergeSets([sparse, dense], limit, 128);
    expect(merged).toBeInstanceOf(Bitset);
    expect(runsOf(merged, limit)).toEqual([0, 40, 500, 520, 999, 1000]);
  });

  it('two sparse eras whose union is too fragmented become dense, as a marked era would', () => {
    const limit = 1024; // dense beyond 8 runs
    const a = runSet(limit, [0, 1], [4, 5], [8, 9], [12, 13], [1023, 1024]);
    const b = runSet(limit, [2, 3], [6, 7], [10, 11], [14, 15]);
    const merged = mergeSets([a, b], limit, 128);
    expect(merged).toBeInstanceOf(Bitset);
    expect(runsOf(merged, limit)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 1023, 1024]);
    const c = runSet(limit, [0, 5]);
    const d = runSet(limit, [5, 9], [1000, 1001]);
    const joined = mergeSets([c, d], limit, 128);
    expect(joined).toBeInstanceOf(RunSet);
    expect(runsOf(joined, limit)).toEqual([0, 9, 1000, 1001]);
  });

  it('reads a bit set of more than one window (block numbers past 2^20)', () => {
    const limit = 3 * 2 ** 20 + 5;
    const dense = new Bitset(limit);
    dense.add(2 ** 20 - 1, 2 ** 20 + 1);
    dense.add(limit - 1, limit);
    const other = new Bitset(limit);
    other.add(0, 1);
    other.add(2 * 2 ** 20, 2 * 2 ** 20 + 3);
    const merged = mergeSets([dense, other], limit, 128);
    expect(runsOf(merged, limit)).toEqual([0, 1, 2 ** 20 - 1, 2 ** 20 + 1, 2 ** 21, 2 ** 21 + 3, limit - 1, limit]);
  });
});

describe('CbtTracker.forget', () => {
  it('a short last block and the first block survive a merge, and queries between points are unchanged', () => {
    const bs = 65536;
    const t = new CbtTracker(10 * bs + 100, bs); // 11 blocks, the last one 100 bytes
    t.mark(2, 0, 1);
    t.mark(3, 10, 5); // clipped to the device
    t.mark(4, 5, 1);
    t.mark(5, 9, 2);
    // points 1 and 4 remain (2 and 3 forgotten), 5 is the current era
    t.forget([1, 4], 5);
    expect(t.footprint().dense).toBe(2); // 11 blocks: one run is already more than a bit set
    expect(query(t, 1, 4)).toEqual([0, 1, 5, 6, 10, 11]);
    expect(query(t, 1, Number.POSITIVE_INFINITY)).toEqual([0, 1, 5, 6, 9, 11]);
    expect(query(t, 4, Number.POSITIVE_INFINITY)).toEqual([9, 11]);
    expect(query(t, 1, 4, 10, 1)).toEqual([10, 11]);
    // marks keep going to the current era; the forgotten eras can be marked again (a writable
    // snapshot's write) and stay invisible to queries from the oldest point
    t.mark(1, 3, 1);
    expect(query(t, 1, 4)).toEqual([0, 1, 5, 6, 10, 11]);
  });

  it('a year of daily cycles keeps as many eras as points, plus the current one', () => {
    const t = new CbtTracker(2 ** 40, 65536);
    const points = new Map<string, number>();
    for (let seq = 1; seq <= 365; seq++) {
      points.set(`d${seq}`, seq); // snapshot taken (era seq closed), then deleted
      t.mark(seq + 1, (seq * 7919) % 1000, 1);
      const kept = [...points.values()].sort((a, b) => b - a).slice(0, 2);
      for (const [name, s] of points) if (!kept.includes(s)) points.delete(name);
      t.forget(kept, seq + 1);
    }
    const f = t.footprint();
    expect(f.sparse + f.dense).toBe(2); // era 365 (between the two points) and 366 (now)
  });
});

describe('model: forgetting never changes a query between remaining points', () => {
  for (let seed = 1; seed <= 30; seed++) {
    it(`random history ${seed}`, () => {
      const rnd = rngInt(seed);
      const limit = [1, 7, 64, 300, 1000, 5000][seed % 6] as number;
      const bs = 4096;
      const size = limit * bs - (seed % 3 === 0 ? 1000 : 0); // sometimes a short last block
      const t = new CbtTracker(size, bs);
      const ref = new CbtTracker(size, bs); // never forgets
      let nextSeq = 1;
      const live = new Set<number>(); // seqs of snapshots that exist
      const bookmarks = new Set<number>(); // points of deleted snapshots
      const mark = (era: number, first: number, count: number) => {
        t.mark(era, first, count);
        ref.mark(era, first, count);
      };
      const check = () => {
        const pts = [...live, ...bookmarks].sort((a, b) => a - b);
        const tos = [...pts, Number.POSITIVE_INFINITY];
        for (const p of pts) {
          for (const q of tos) {
            if (q <= p) continue;
            expect(query(t, p, q)).toEqual(query(ref, p, q));
            const first = rnd(limit);
            const count = 1 + rnd(limit - first);
            expect(query(t, p, q, first, count)).toEqual(query(ref, p, q, first, count));
          }
        }
      };
      for (let step = 0; step < 300; step++) {
        const action = rnd(10);
        if (action < 5) {
          // a write now; some dense bursts (every other block)
          if (rnd(20) === 0) for (let b = rnd(2); b < limit; b += 2) mark(nextSeq, b, 1);
          else mark(nextSeq, rnd(limit), 1 + rnd(Math.min(limit, 8)));
        } else if (action === 5 && live.size > 0) {
          // a write to a writable snapshot: its era and the next
          const s = [...live][rnd(live.size)] as number;
          const first = rnd(limit);
          mark(s, first, 1);
          mark(s + 1, first, 1);
        } else if (action === 6) {
          live.add(nextSeq++);
        } else if (action === 7 && live.size > 0) {
          const s = [...live][rnd(live.size)] as number;
          live.delete(s);
          bookmarks.add(s);
        } else if (action >= 8 && bookmarks.size > 0) {
          const s = [...bookmarks][rnd(bookmarks.size)] as number;
          check();
          bookmarks.delete(s);
          t.forget([...live, ...bookmarks], nextSeq);
          check();
          const f = t.footprint();
          const eras = f.sparse + f.dense;
          // one era per interval between remaining points (keyed at its end), plus the eras after
          // the newest point, which are left alone; with no point, at most the current era
          const points = new Set([...live, ...bookmarks]);
          const newest = Math.max(0, ...points);
          expect(eras).toBeLessThanOrEqual(points.size === 0 ? 1 : points.size - 1 + nextSeq - newest);
        }
      }
      check();
    });
  }
});
