/**
 * The buffer pool's idle limit (src/block/buffer-pool.ts): when it is reached, the buffers of the
 * lengths given back longest ago make room for the length given back now, so that a pool filled
 * by one workload's size does not turn every buffer of the next workload into garbage.
 */
import { describe, expect, it } from 'vitest';
import * as pool from '../../src/block/buffer-pool.ts';

const MiB = 1024 * 1024;
/** Lengths no other test takes: one just over 1 MiB, one just over 2 MiB (48 MiB idle at most). */
const OLD = MiB + 8192;
const NEW = 2 * MiB + 8192;

describe('buffer pool: the idle limit', () => {
  it('gives room to the length in use, dropping idle buffers of a length given back longer ago', () => {
    const old = Array.from({ length: 47 }, () => pool.take(OLD));
    for (const b of old) pool.give(b); // about 47 MiB idle, all of the old length
    const fresh = Array.from({ length: 4 }, () => pool.take(NEW));
    const oldTaken = old.length; // every old buffer is idle again
    for (const b of fresh) pool.give(b);
    // The new length was kept: taking it again returns the same buffers, not fresh ones.
    const again = Array.from({ length: 4 }, () => pool.take(NEW));
    expect(new Set(again)).toEqual(new Set(fresh));
    // Some of the old length made room: fewer of them come back than were given.
    const back = Array.from({ length: oldTaken }, () => pool.take(OLD)).filter((b) => old.includes(b));
    expect(back.length).toBeLessThan(oldTaken);
    expect(back.length).toBeGreaterThan(30);
  });
});
