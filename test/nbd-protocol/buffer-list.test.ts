/**
 * BufferList, the queue the parsers read from: exact bytes across chunk boundaries, no copy when
 * the bytes lie in one chunk, and a seeded random walk checked against a flat reference buffer.
 */
import { describe, expect, it } from 'vitest';
import { BufferList } from '../../src/nbd-protocol/index.ts';

const seq = (from: number, n: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (from + i) & 0xff));

function listOf(...chunks: Buffer[]): BufferList {
  const l = new BufferList();
  for (const c of chunks) l.push(c);
  return l;
}

describe('BufferList', () => {
  it('counts pushed bytes and ignores empty chunks', () => {
    const l = new BufferList();
    expect(l.length).toBe(0);
    l.push(Buffer.alloc(0));
    expect(l.length).toBe(0);
    l.push(seq(0, 3));
    l.push(Buffer.alloc(0));
    l.push(seq(3, 4));
    expect(l.length).toBe(7);
    expect(l.take(7)).toEqual(seq(0, 7));
    expect(l.length).toBe(0);
  });

  it('takes within one chunk without copying', () => {
    const chunk = seq(0, 10);
    const l = listOf(chunk);
    l.skip(2);
    const view = l.take(4);
    expect(view).toEqual(seq(2, 4));
    chunk[3] = 0xee; // a view of the chunk, not a copy
    expect(view[1]).toBe(0xee);
  });

  it('takes across chunk boundaries with one copy', () => {
    const a = seq(0, 3);
    const b = seq(3, 2);
    const c = seq(5, 5);
    const l = listOf(a, b, c);
    l.skip(1);
    const out = l.take(7);
    expect(out).toEqual(seq(1, 7));
    a[1] = 0xee; // the copy does not see later changes to the chunks
    expect(out[0]).toBe(1);
    expect(l.length).toBe(2);
    expect(l.take(2)).toEqual(seq(8, 2));
  });

  it('peeks without consuming', () => {
    const l = listOf(seq(0, 2), seq(2, 2));
    expect(l.peek(3)).toEqual(seq(0, 3));
    expect(l.peek(1)).toEqual(seq(0, 1));
    expect(l.length).toBe(4);
    expect(l.take(4)).toEqual(seq(0, 4));
  });

  it('skips across chunks and reports how much it dropped', () => {
    const l = listOf(seq(0, 3), seq(3, 3), seq(6, 3));
    expect(l.skip(4)).toBe(4);
    expect(l.length).toBe(5);
    expect(l.byteAt(0)).toBe(4);
    expect(l.skip(100)).toBe(5);
    expect(l.length).toBe(0);
    expect(l.skip(1)).toBe(0);
    l.push(seq(50, 2));
    expect(l.take(2)).toEqual(seq(50, 2));
  });

  it('reads single bytes anywhere, and refuses to read past the end', () => {
    const l = listOf(seq(0, 2), seq(2, 1), seq(3, 4));
    l.skip(1);
    expect([0, 1, 2, 3, 4, 5].map((i) => l.byteAt(i))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(() => l.byteAt(6)).toThrow(RangeError);
  });

  it('take(0) and peek(0) return empty buffers', () => {
    const l = new BufferList();
    expect(l.take(0)).toHaveLength(0);
    l.push(seq(0, 1));
    expect(l.peek(0)).toHaveLength(0);
    expect(l.length).toBe(1);
  });

  it('matches a flat reference buffer over a seeded random walk', () => {
    let state = 0x12345678;
    const rand = (n: number): number => {
      // xorshift32: deterministic, so a failure reproduces
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      return (state >>> 0) % n;
    };
    const l = new BufferList();
    let ref = Buffer.alloc(0);
    let next = 0;
    for (let step = 0; step < 5000; step++) {
      const op = rand(5);
      if (op <= 1) {
        const c = seq(next, rand(9));
        next += c.length;
        l.push(c);
        ref = Buffer.concat([ref, c]);
      } else if (op === 2 && ref.length > 0) {
        const n = rand(ref.length + 1);
        expect(l.take(n), `step ${step}`).toEqual(ref.subarray(0, n));
        ref = ref.subarray(n);
      } else if (op === 3 && ref.length > 0) {
        const n = rand(ref.length + 3);
        expect(l.skip(n)).toBe(Math.min(n, ref.length));
        ref = ref.subarray(Math.min(n, ref.length));
      } else if (ref.length > 0) {
        const n = rand(ref.length + 1);
        expect(l.peek(n), `step ${step}`).toEqual(ref.subarray(0, n));
        const i = rand(ref.length);
        expect(l.byteAt(i)).toBe(ref[i]);
      }
      expect(l.length).toBe(ref.length);
    }
  });
});
