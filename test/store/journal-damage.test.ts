/**
 * The journal after a crash that tore the last batch (its sectors written in any subset, at
 * 512-byte granularity, as the journal's crash model says) and after damage (one byte changed, a
 * sector read as zeros): a torn batch is dropped, never called damage; damage in a completed
 * batch is a CORRUPT error, never fewer records. Rig: test/store/journal-rig.ts.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  type Built,
  build,
  changedBytes,
  changedSectors,
  flipByte,
  open,
  outcome,
  recordsIn,
  SECTOR,
  SIZES,
  tear,
} from './journal-rig.ts';

describe('journal: torn tail or damage', () => {
  it('drops a last batch torn at any sector boundary or in any sector subset, and never calls it damage', async () => {
    // Last batch within one block, and last batch crossing into a new block (a sync in between).
    const cases: { built: Built; crossing: boolean }[] = [];
    for (let extra = 1; cases.length < 2 && extra < 60; extra += 3) {
      const built = await build([...SIZES.slice(0, 20), extra, 30], false);
      const n = built.marks.length;
      const crossing = (built.marks[n - 1] as number) - (built.marks[n - 2] as number) === 2;
      if (!cases.some((c) => c.crossing === crossing)) cases.push({ built, crossing });
    }
    expect(cases.map((c) => c.crossing).sort()).toEqual([false, true]);
    let tried = 0;
    for (const { built } of cases) {
      const n = built.marks.length;
      const full = built.batches.flat();
      const previous = built.batches.slice(0, -1).flat();
      // Each sync interval of the last batch: the state after the sync before it, plus any subset
      // of the sectors written in it.
      for (let i = (built.marks[n - 2] as number) + 1; i <= (built.marks[n - 1] as number); i++) {
        const before = built.images[i - 1] as Buffer;
        const after = built.images[i] as Buffer;
        const final = i === built.marks[n - 1];
        const sectors = changedSectors(before, after);
        expect(sectors.length).toBeGreaterThan(0);
        const subsets: number[][] = [];
        for (let k = 0; k <= sectors.length; k++) subsets.push(sectors.slice(0, k)); // every prefix
        for (let k = 0; k < sectors.length; k++) subsets.push(sectors.filter((_, j) => j !== k)); // one missing
        for (let k = 0; k < sectors.length; k++) subsets.push([sectors[k] as number]); // one written
        const coin = lcg(7 + i);
        for (let k = 0; k < 20; k++) subsets.push(sectors.filter(() => coin())); // random subsets
        for (const take of subsets) {
          tried += 1;
          writeFileSync(built.path, tear(before, after, take));
          const whole = final && take.length === sectors.length;
          const { records, report } = await open(built.path, built.first);
          expect(records).toEqual(whole ? full : previous);
          if (!whole) expect(report.cleanStop).toBe(false);
          // Zeroed: the next start finds the same, with nothing torn.
          const again = await open(built.path, built.first);
          expect(again.records).toEqual(records);
          expect(again.report.reason).toBe('end');
        }
      }
    }
    expect(tried).toBeGreaterThan(100);
  });
  it('refuses one changed byte anywhere in a completed batch, the last one too, after a clean stop or a crash', async () => {
    const counts: Record<string, number> = {};
    for (const clean of [true, false]) {
      const built = await build([...SIZES.slice(0, 24), 3, 40, 2], clean);
      const want = built.batches.flat();
      const last = built.images.length - 1;
      const n = built.marks.length;
      // Every byte written by the last two batches (and the CLEAN batch), a sample elsewhere.
      const tailFrom = built.marks[n - 3] as number;
      const every = changedBytes(built.images[tailFrom] as Buffer, built.images[last] as Buffer);
      const earlier = changedBytes(built.images[0] as Buffer, built.images[tailFrom] as Buffer);
      const sample = earlier.filter((_, i) => i % 23 === 0);
      expect(every.length).toBeGreaterThan(1000);
      const image = built.images[last] as Buffer;
      const inRecord = new Set<number>();
      for (const r of recordsIn(image, every)) for (let p = r.pos; p < r.pos + r.size; p++) inRecord.add(p);
      expect(inRecord.size).toBeGreaterThan(1000);
      for (const [positions, mask] of [
        [every, 0xff],
        [every.filter((_, i) => i % 3 === 0), 0x01],
        [sample, 0xff],
        [sample, 0x80],
      ] as const) {
        for (const pos of positions) {
          flipByte(built.path, pos, mask);
          const got = await outcome(built.path, built.first, want);
          flipByte(built.path, pos, mask);
          counts[got] = (counts[got] ?? 0) + 1;
          if (got === 'fewer' || got === 'other') throw new Error(`byte ${pos} ^ ${mask}: ${got} records, silently`);
          if (inRecord.has(pos) && got !== 'corrupt') throw new Error(`byte ${pos} ^ ${mask} of a record: ${got}`);
        }
      }
      // The bytes of the last COMMIT record itself, each of them, each way.
      const commits = recordsIn(image, changedBytes(built.images[built.marks[n - 2] as number] as Buffer, image));
      const commit = commits.filter((r) => r.type === 'COMMIT').at(clean ? -2 : -1) as { pos: number };
      for (let pos = commit.pos; pos < commit.pos + 36; pos++) {
        for (const mask of [0x01, 0x80, 0xff]) {
          flipByte(built.path, pos, mask);
          expect(await outcome(built.path, built.first, want)).toBe('corrupt');
          flipByte(built.path, pos, mask);
        }
      }
      expect(await outcome(built.path, built.first, want)).toBe('exact');
    }
    expect(counts.corrupt).toBeGreaterThan(4000);
  });
  it('refuses a sector of a completed batch that reads as zeros (a lost write), with batches after it', async () => {
    const built = await build(SIZES, false);
    const want = built.batches.flat();
    const n = built.marks.length;
    const final = built.images.at(-1) as Buffer;
    // Sectors written by the batches before the last two, in none of the last two's sectors (a lost
    // write of the sectors that end the journal is what a torn tail looks like).
    const end = built.images[built.marks[n - 3] as number] as Buffer;
    const late = new Set(changedSectors(end, final));
    const sectors = changedSectors(built.images[0] as Buffer, end).filter((s) => !late.has(s));
    const original = readFileSync(built.path);
    let refused = 0;
    for (const s of sectors) {
      const image = Buffer.from(final);
      if (image.subarray(s * SECTOR, (s + 1) * SECTOR).every((x) => x === 0)) continue;
      image.fill(0, s * SECTOR, (s + 1) * SECTOR);
      writeFileSync(built.path, image);
      const got = await outcome(built.path, built.first, want);
      expect(got).toBe('corrupt');
      refused += 1;
    }
    writeFileSync(built.path, original);
    expect(refused).toBeGreaterThan(10);
  });
});

/** A deterministic coin. */
function lcg(seed: number): () => boolean {
  let x = seed >>> 0;
  return () => {
    x = (x * 1103515245 + 12345) >>> 0;
    return (x & 0x10000) !== 0;
  };
}
