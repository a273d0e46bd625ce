// The model the cluster tests judge snapshots and reads with (history.ts), without a server: what
// a sector may hold at a point, and that wrong, misplaced or torn sectors are caught.
import { describe, expect, it } from 'vitest';
import { SECTOR, stampedData, stampedImage } from '../helpers/stamps.ts';
import { History } from './history.ts';

const SIZE = 8 * SECTOR;

/** The device as the given per-sector write numbers. */
function image(seqs: number[]): Buffer {
  return Buffer.concat(seqs.map((seq, s) => stampedData(seq, s * SECTOR, SECTOR)));
}

describe('History', () => {
  it('a point before a write allows only the old data; during it, either; after it, only the new', () => {
    const h = new History(SIZE, 0);
    const before = h.tick();
    const w = h.sent(1, 2 * SECTOR, 2 * SECTOR);
    const during = h.tick();
    h.answered(w, true);
    const after = h.tick();
    expect(h.allowed(2, before, before)).toEqual([0]);
    expect(h.allowed(2, during, during)).toEqual([0, 1]);
    expect(h.allowed(2, after, after)).toEqual([1]);
    expect(h.allowed(0, after, after)).toEqual([0]);
    // a snapshot whose create call spanned the write may hold either
    expect(h.allowed(3, before, after)).toEqual([0, 1]);

    expect(h.judge(image([0, 0, 1, 1, 0, 0, 0, 0]), 0, after, after)).toEqual([]);
    expect(h.judge(image([0, 0, 1, 0, 0, 0, 0, 0]), 0, during, during)).toEqual([]);
    const wrong = h.judge(image([0, 0, 1, 1, 0, 0, 0, 0]), 0, before, before);
    expect(wrong).toHaveLength(2);
    expect(wrong[0]).toMatch(/^sector 2: holds write 1 for sector 2; allowed writes 0$/);
  });

  it('a failed write may or may not have landed, but never over a later write that succeeded', () => {
    const h = new History(SIZE, stampedImage(SIZE, 5));
    const failed = h.sent(6, 0, SECTOR);
    h.answered(failed, false);
    const t1 = h.tick();
    expect(h.allowed(0, t1, t1)).toEqual([5, 6]);
    const later = h.sent(7, 0, SECTOR);
    h.answered(later, true);
    const t2 = h.tick();
    expect(h.allowed(0, t2, t2)).toEqual([7]);
    expect(h.failed()).toEqual([failed]);
  });

  it('catches zeroes, a misplaced sector and a torn one', () => {
    const h = new History(SIZE, 0);
    const t = h.tick();
    const zeroes = image([0, 0, 0, 0, 0, 0, 0, 0]);
    zeroes.fill(0, 3 * SECTOR, 4 * SECTOR);
    expect(h.judge(zeroes, 0, t, t)).toEqual([expect.stringMatching(/^sector 3: holds zeroes/)]);
    const misplaced = image([0, 0, 0, 0, 0, 0, 0, 0]);
    stampedData(0, 6 * SECTOR, SECTOR).copy(misplaced, 5 * SECTOR);
    expect(h.judge(misplaced, 0, t, t)).toEqual([expect.stringMatching(/^sector 5: .*MISPLACED/)]);
    const torn = image([0, 0, 0, 0, 0, 0, 0, 0]);
    torn[7 * SECTOR + 100] = (torn[7 * SECTOR + 100] as number) ^ 1;
    expect(h.judge(torn, 0, t, t)).toEqual([expect.stringMatching(/^sector 7: .*torn/)]);
    // judged at an offset: the sectors are those of the device
    expect(h.judge(image([0, 0, 0, 0, 0, 0, 0, 0]).subarray(4 * SECTOR), 4 * SECTOR, t, t)).toEqual([]);
  });
});
