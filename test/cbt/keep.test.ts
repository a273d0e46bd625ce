/**
 * `--cbt-keep-deleted N` as a pure choice: the points of snapshots that exist are never
 * forgotten; of the deleted ones, the N newest by seq (not by name or insertion order) stay.
 */
import { describe, expect, it } from 'vitest';
import { beyondKeep, pointList } from '../../src/cbt/keep.ts';

const marks = new Map([
  ['zeta', 1],
  ['b', 7],
  ['live1', 2],
  ['a', 5],
  ['live2', 9],
  ['c', 3],
]);
const live = new Set(['live1', 'live2']);

describe('keep', () => {
  it('lists the points oldest first, marking the snapshots that exist', () => {
    expect(pointList(marks, live).map((p) => `${p.name}:${p.seq}:${p.snapshot ? 's' : 'd'}`)).toEqual([
      'zeta:1:d',
      'live1:2:s',
      'c:3:d',
      'a:5:d',
      'b:7:d',
      'live2:9:s',
    ]);
  });

  it('forgets the deleted points beyond the newest N, oldest first, never a snapshot that exists', () => {
    expect(beyondKeep(marks, live, 0)).toEqual(['zeta', 'c', 'a', 'b']);
    expect(beyondKeep(marks, live, 1)).toEqual(['zeta', 'c', 'a']);
    expect(beyondKeep(marks, live, 2)).toEqual(['zeta', 'c']);
    expect(beyondKeep(marks, live, 4)).toEqual([]);
    expect(beyondKeep(marks, live, 100)).toEqual([]);
    expect(beyondKeep(new Map(), live, 0)).toEqual([]);
  });
});
