/**
 * The compact exception table against a plain Map model (the table as it was: chunk -> versions
 * by ascending seq, each with slot, crc and lost flag), for random sequences of add, prune,
 * pruneChunk, remove, lose, resolve, next and runs; with small leaves so they split and merge
 * often, and chunk numbers around 0, 2^32 and 2^40. Then the boundaries one by one.
 */
import { describe, expect, it } from 'vitest';
import { ChunkTree } from '../../../src/snapshot/chunk-tree.ts';
import {
  copyOf,
  ExceptionTable,
  PrivateChunks,
  type SnapshotRef,
  type Version,
} from '../../../src/snapshot/exception-table.ts';
import { rngInt } from '../../helpers/random.ts';

/** The reference: what the table was before it was made compact. */
class MapTable {
  readonly versions = new Map<number, Version[]>();

  add(chunk: number, seq: number, slot: number, crc: number): void {
    const list = [...(this.versions.get(chunk) ?? []), { seq, slot, crc: crc | 0, lost: false }];
    this.versions.set(
      chunk,
      list.sort((a, b) => a.seq - b.seq),
    );
  }

  find(chunk: number, seq: number): Version | undefined {
    const v = this.versions.get(chunk)?.find((x) => x.seq >= seq);
    return v === undefined ? undefined : { ...v }; // as it is now
  }

  latest(chunk: number): number {
    const list = this.versions.get(chunk);
    return list === undefined ? 0 : (list[list.length - 1] as Version).seq;
  }

  pruneChunk(chunk: number, seqs: number[], freed: number[]): void {
    const list = this.versions.get(chunk);
    if (list === undefined) return;
    let prev = 0;
    const kept = list.filter((v) => {
      const from = prev;
      prev = v.seq;
      if (seqs.some((s) => s > from && s <= v.seq)) return true;
      freed.push(v.slot);
      return false;
    });
    if (kept.length === 0) this.versions.delete(chunk);
    else this.versions.set(chunk, kept);
  }

  remove(chunk: number, slot: number): void {
    const kept = (this.versions.get(chunk) ?? []).filter((v) => v.slot !== slot);
    if (kept.length === 0) this.versions.delete(chunk);
    else this.versions.set(chunk, kept);
  }

  entries(): [number, Version][] {
    return [...this.versions.keys()]
      .sort((a, b) => a - b)
      .flatMap((c) => (this.versions.get(c) as Version[]).map((v) => [c, { ...v }] as [number, Version]));
  }

  reads(chunk: number, s: SnapshotRef): boolean {
    return s.privateChunks.has(chunk) || this.latest(chunk) >= s.seq;
  }
}

const BASES = [0, 2 ** 32 - 40, 2 ** 40];

describe('ExceptionTable against a Map model', () => {
  it('agrees after random operations, with leaves that split and merge often', () => {
    for (let seed = 1; seed <= 150; seed++) {
      const r = rngInt(seed);
      const leaf = [4, 5, 8, 16, 512][seed % 5] as number;
      const base = BASES[seed % 3] as number;
      const span = [12, 80, 600][seed % 3] as number;
      const t = new ExceptionTable(leaf);
      const m = new MapTable();
      const snaps: SnapshotRef[] = [1, 2, 3, 4, 5, 6].map((seq) => ({ seq, privateChunks: new PrivateChunks() }));
      let slot = 1;
      const where = (step: number) => `seed ${seed} leaf ${leaf} step ${step}`;
      const got: unknown[] = [];
      const wanted: unknown[] = [];
      for (let step = 0; step < 300; step++) {
        const c = base + r(span);
        const s = snaps[r(snaps.length)] as SnapshotRef;
        const op = r(20);
        if (op < 8) {
          // Mostly copies for a newer snapshot; sometimes an older one (versions stay ordered).
          const seq = r(4) === 0 ? 1 + r(6) : Math.max(s.seq, m.latest(c) + 1);
          const crc = r(2) === 0 ? 0x80000000 + r(1000) : r(1000);
          t.add(c, seq, slot, crc);
          m.add(c, seq, slot, crc);
          slot += 1;
        } else if (op < 10) {
          if (r(2) === 0) s.privateChunks.set(c, copyOf(slot++, 0));
          else s.privateChunks.delete(c);
        } else if (op === 10) {
          const live = snaps.filter(() => r(3) > 0);
          const freed: number[] = [];
          const want: number[] = [];
          if (r(2) === 0) {
            t.prune(live, (x) => freed.push(x));
            for (const chunk of [...m.versions.keys()])
              m.pruneChunk(
                chunk,
                live.map((x) => x.seq),
                want,
              );
          } else {
            t.pruneChunk(c, live, (x) => freed.push(x));
            m.pruneChunk(
              c,
              live.map((x) => x.seq),
              want,
            );
          }
          expect(
            freed.sort((a, b) => a - b),
            where(step),
          ).toEqual(want.sort((a, b) => a - b));
        } else if (op === 11) {
          const held = m.versions.get(c);
          const victim = held?.[r(held.length)]?.slot ?? slot + 5;
          t.remove(c, victim);
          m.remove(c, victim);
        } else if (op === 12) {
          const held = m.versions.get(c);
          const victim = held?.[r(held.length)];
          const got = t.lose(c, victim?.slot ?? slot + 5, []);
          if (victim !== undefined) victim.lost = true;
          expect(got === undefined, where(step)).toBe(victim === undefined);
        } else {
          // Compared once at the end of the sequence (one expect: thousands of answers).
          const from = base + r(span + 2) - (base > 0 ? 1 : 0);
          let want: number | undefined;
          for (let k = from; k < base + span && want === undefined; k++) if (m.reads(k, s)) want = k;
          let end: number | undefined;
          if (want !== undefined) {
            end = want + 1;
            while (end < base + span && m.reads(end, s)) end += 1;
          }
          got.push([step, t.find(c, s.seq), t.latest(c), t.readsStore(c, s), t.nextStored(from, s)]);
          wanted.push([step, m.find(c, s.seq), m.latest(c), m.reads(c, s), want]);
          if (want !== undefined) {
            got.push([step, t.storedRunEnd(want, s, base + span + 1)]);
            wanted.push([step, end]);
          }
        }
      }
      expect(got, where(300)).toEqual(wanted);
      expect([...t.entries()], `seed ${seed}`).toEqual(m.entries());
      expect(t.size).toBe(m.entries().length);
      expect(t.chunks()).toEqual([...m.versions.keys()].sort((a, b) => a - b));
      for (const s of snaps) {
        const runs: number[] = [];
        t.storedRuns(s, base, base + span, (first, end) => {
          for (let k = first; k < end; k++) runs.push(k);
        });
        const want: number[] = [];
        for (let k = base; k < base + span; k++) if (m.reads(k, s)) want.push(k);
        expect(runs, `seed ${seed} snapshot ${s.seq}`).toEqual(want);
      }
    }
  });

  it('compares equal by its copies, whatever the history (replay tests compare catalogs)', () => {
    const a = new ExceptionTable(4);
    const b = new ExceptionTable(4);
    for (let c = 0; c < 40; c++) a.add(c, 1, c, 0);
    for (let c = 10; c < 40; c++) a.remove(c, c);
    for (let c = 9; c >= 0; c--) b.add(c, 1, c, 0);
    expect(a).toEqual(b);
    b.add(3, 2, 99, 0);
    expect(a).not.toEqual(b);
  });
});

describe('ExceptionTable boundaries', () => {
  const s1: SnapshotRef = { seq: 1, privateChunks: new PrivateChunks() };
  const LAST_15TIB = (15 * 2 ** 40) / 65536 - 1;

  it.each([
    ['chunk 0', 0],
    ['the last chunk of a 15 TiB device', LAST_15TIB],
    ['2^32 - 1', 2 ** 32 - 1],
    ['2^32', 2 ** 32],
    ['2^40 + 1', 2 ** 40 + 1],
    ['2^53 - 1', Number.MAX_SAFE_INTEGER],
  ])('%s', (_name, chunk) => {
    const t = new ExceptionTable(4);
    for (const c of [chunk - 2, chunk - 1, chunk + 1, chunk + 2])
      if (c >= 0 && c <= Number.MAX_SAFE_INTEGER) t.add(c, 1, c % 1000, 0);
    t.add(chunk, 1, 4242, -5);
    expect(t.find(chunk, 1)).toEqual({ seq: 1, slot: 4242, crc: -5, lost: false });
    expect(t.nextCopied(chunk, 1)).toBe(chunk);
    expect(t.nextCopied(chunk, 2)).toBeUndefined();
    expect(t.lose(chunk, 4242, [])?.lost).toBe(true);
    expect(t.find(chunk, 1)?.lost).toBe(true);
    t.remove(chunk, 4242);
    expect(t.find(chunk, 1)).toBeUndefined();
    expect(t.nextCopied(chunk, 1)).toBe(chunk + 1 <= Number.MAX_SAFE_INTEGER ? chunk + 1 : undefined);
    expect(t.chunks()).not.toContain(chunk);
  });

  it('refuses chunk numbers that are not safe non-negative integers', () => {
    const t = new ExceptionTable();
    for (const bad of [-1, 0.5, 2 ** 53, Number.NaN]) expect(() => t.add(bad, 1, 1, 0)).toThrow(/bad chunk number/);
    expect(t.size).toBe(0);
  });

  it('a run ends at its limit, at a gap, and across private chunks', () => {
    const t = new ExceptionTable(4);
    const w: SnapshotRef = { seq: 2, privateChunks: new PrivateChunks() };
    for (const c of [0, 1, 2, 4]) t.add(c, 2, c, 0);
    t.add(5, 1, 5, 0); // read by snapshot 1 only
    w.privateChunks.set(3, copyOf(30, 0));
    expect(t.storedRunEnd(0, w, 100)).toBe(5);
    expect(t.storedRunEnd(0, w, 2)).toBe(2);
    expect(t.storedRunEnd(0, s1, 100)).toBe(3);
    const runs: [number, number][] = [];
    t.storedRuns(w, 1, 100, (a, b) => runs.push([a, b]));
    expect(runs).toEqual([[1, 5]]);
  });

  it('lost copies: the flag follows the copy, and is gone once the slot is freed', () => {
    const t = new ExceptionTable();
    t.add(7, 1, 70, 0);
    t.add(7, 3, 71, 0);
    t.lose(7, 70, []);
    expect(t.find(7, 1)?.lost).toBe(true);
    expect(t.find(7, 2)?.lost).toBe(false);
    t.prune([{ seq: 3, privateChunks: new Map() }], () => undefined); // 70 is read by nobody now
    t.add(8, 3, 70, 0); // the slot reused
    expect(t.find(8, 3)?.lost).toBe(false);
  });

  it('entries() continues correctly when the table changes between two steps', () => {
    const t = new ExceptionTable(4);
    for (let c = 0; c < 50; c++) t.add(c, 1, c, 0);
    const seen: number[] = [];
    for (const [c] of t.entries()) {
      seen.push(c);
      if (c === 10) for (let k = 11; k < 30; k++) t.remove(k, k);
      if (c === 40) t.add(45.0 + 100, 1, 999, 0);
    }
    expect(seen).toEqual([
      ...Array.from({ length: 11 }, (_, i) => i),
      ...Array.from({ length: 20 }, (_, i) => 30 + i),
      145,
    ]);
  });
});

describe('ChunkTree leaves', () => {
  it('keys added in order fill their leaves; removals merge them', () => {
    const t = new ChunkTree(3, 8);
    for (let c = 0; c < 800; c++) t.insert(c, 1);
    expect(t.leafCount).toBe(100);
    for (let c = 0; c < 800; c++) if (c % 8 !== 0) t.delete(c);
    expect(t.size).toBe(100);
    expect(t.leafCount).toBeLessThanOrEqual(50);
    const keys: number[] = [];
    for (let h = t.next(0); h >= 0; h = t.following(h)) keys.push(t.key(h));
    expect(keys).toEqual(Array.from({ length: 100 }, (_, i) => 8 * i));
  });

  it('a leaf widens to 64-bit keys when one past 2^32 enters it, and stays exact', () => {
    const t = new ChunkTree(0, 4);
    const keys = [2 ** 32 + 3, 5, 2 ** 32 - 1, 2 ** 32, 0, 2 ** 45, 2 ** 32 + 1];
    for (const k of keys) t.insert(k);
    const out: number[] = [];
    for (let h = t.next(0); h >= 0; h = t.following(h)) out.push(t.key(h));
    expect(out).toEqual([...keys].sort((a, b) => a - b));
    expect(t.key(t.next(2 ** 32 + 2))).toBe(2 ** 32 + 3);
    expect(() => t.insert(5)).toThrow(/held already/);
  });

  it('the weight of an entry may rise and fall; the max-tree stays exact', () => {
    const t = new ChunkTree(3, 4);
    for (let c = 0; c < 64; c++) t.insert(c, 1);
    const h = t.find(40);
    t.setVal(h, 0, 9);
    expect(t.key(t.next(0, 9))).toBe(40);
    t.setVal(t.find(40), 0, 2);
    expect(t.next(0, 3)).toBe(-1);
    expect(t.key(t.next(0, 2))).toBe(40);
    expect(t.next(41, 2)).toBe(-1);
    expect(t.key(t.next(41, 1))).toBe(41);
  });
});

describe('ExceptionTable.lost', () => {
  it('lists exactly the lost copies still held', () => {
    const t = new ExceptionTable(4);
    for (let c = 0; c < 20; c++) t.add(c, 1, 100 + c, c);
    t.add(5, 2, 200, 0);
    t.lose(5, 105, []);
    t.lose(5, 200, []);
    t.lose(9, 109, []);
    t.lose(9, 999, []); // not held: nothing
    t.remove(9, 109);
    expect([...t.lost()].sort((a, b) => a[1].slot - b[1].slot)).toEqual([
      [5, { seq: 1, slot: 105, crc: 5, lost: true }],
      [5, { seq: 2, slot: 200, crc: 0, lost: true }],
    ]);
  });
});
