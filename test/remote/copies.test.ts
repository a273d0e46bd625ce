/**
 * The replay log's spare copy buffers (src/remote/copies.ts): a released copy is taken again by
 * the next write of its length, and no more is held idle than the room the log leaves.
 */
import { describe, expect, it } from 'vitest';
import { Copies } from '../../src/remote/copies.ts';

describe('Copies (the replay log buffers kept between flushes)', () => {
  it('gives a released copy to the next write of its length, within the room left', () => {
    const c = new Copies();
    const a = c.take(8192);
    const b = c.take(8192);
    c.give(a, 16384);
    c.give(b, 8192); // no room for a second one: back to the pool
    expect(c.bytes).toBe(8192);
    expect(c.take(8192)).toBe(a);
    expect(c.bytes).toBe(0);
    c.give(a, 16384);
    c.clear();
    expect(c.bytes).toBe(0);
    expect(c.take(8192).length).toBe(8192); // from the pool now
  });
});
