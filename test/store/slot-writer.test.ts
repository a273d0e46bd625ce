/**
 * Coalesced slot writes (slot-writer.ts) and run allocation (space.ts): copies in consecutive
 * slots of one range go out as one pwritev, never across a range's end, every write lands where
 * it was asked, and writes to one slot keep their order.
 */
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { groups, SlotWriter } from '../../src/store/slot-writer.ts';
import { StoreSpace } from '../../src/store/space.ts';
import { tempDir } from '../helpers/server.ts';

const CHUNK = 4096;
const RESERVED = 8192;

const dirs: { cleanup(): void }[] = [];
afterAll(() => {
  for (const d of dirs) d.cleanup();
});

function space(rangeSlots: number[]): { space: StoreSpace; files: string[] } {
  const tmp = tempDir('slotw-');
  dirs.push(tmp);
  const dir = tmp.path;
  const s = new StoreSpace(CHUNK, RESERVED);
  const files: string[] = [];
  rangeSlots.forEach((n, i) => {
    const path = join(dir, `r${i}.img`);
    writeFileSync(path, '');
    truncateSync(path, RESERVED + n * CHUNK);
    s.add({ path, start: 0, length: RESERVED + n * CHUNK });
    files.push(path);
  });
  return { space: s, files };
}

const fill = (byte: number): Buffer => Buffer.alloc(CHUNK, byte);

describe('groups', () => {
  const w = (slot: number) => ({ slot, data: fill(slot) });
  it('joins consecutive slots, in slot order, and cuts at gaps and range ends', () => {
    const end = (slot: number) => (slot < 10 ? 10 : 20);
    const got = groups([w(3), w(1), w(2), w(5), w(9), w(10), w(11)], end, CHUNK).map((g) => g.map((x) => x.slot));
    expect(got).toEqual([[1, 2, 3], [5], [9], [10, 11]]);
  });
  it('keeps a group within 256 buffers', () => {
    const many = Array.from({ length: 600 }, (_, i) => w(i));
    expect(groups(many, () => 1000, CHUNK).map((g) => g.length)).toEqual([256, 256, 88]);
  });
  it('writes a short copy (the last chunk of a device) on its own, never inside a run', () => {
    const short = (slot: number) => ({ slot, data: Buffer.alloc(CHUNK / 2, slot) });
    const got = groups([w(1), short(2), w(3), w(4), short(5), short(6)], () => 100, CHUNK);
    expect(got.map((g) => g.map((x) => x.slot))).toEqual([[1], [2], [3, 4], [5], [6]]);
  });
});

describe('StoreSpace.allocateRun', () => {
  it('takes consecutive slots of one range, and never a run across two ranges', () => {
    const { space: s } = space([6, 6]);
    expect(s.allocateRun(4)).toEqual([0, 1, 2, 3]);
    // 2 free slots left in range 0: a run of 3 is found in range 1
    expect(s.allocateRun(3)).toEqual([6, 7, 8]);
    s.release(1);
    s.release(2);
    expect(s.allocateRun(2)).toEqual([9, 10]); // next fit: after the cursor first
    expect(s.allocateRun(2)).toEqual([1, 2]); // past the end, from the start
    expect(s.allocateRun(3)).toEqual([4, 5, 11]); // no run of 3 left: one by one, next fit
    s.close();
  });
  it('gives fewer slots when fewer are free, and none when full', () => {
    const { space: s } = space([4]);
    expect(s.allocateRun(3)).toEqual([0, 1, 2]);
    expect(s.allocateRun(3)).toEqual([3]);
    expect(s.allocateRun(3)).toEqual([]);
    s.close();
  });
});

describe('SlotWriter', () => {
  it('writes every slot where asked, across ranges, coalesced or not', async () => {
    const { space: s, files } = space([8, 8]);
    const writer = new SlotWriter(s);
    const slots = [0, 1, 2, 3, 5, 7, 8, 9, 15];
    await Promise.all(slots.map((slot) => writer.write(slot, fill(slot + 1))));
    for (const slot of slots) {
      const file = readFileSync(files[slot < 8 ? 0 : 1] as string);
      const at = RESERVED + (slot % 8) * CHUNK;
      expect(file.subarray(at, at + CHUNK).equals(fill(slot + 1))).toBe(true);
    }
    // untouched slots still read as zeros
    const f0 = readFileSync(files[0] as string);
    expect(f0.subarray(RESERVED + 4 * CHUNK, RESERVED + 5 * CHUNK).equals(Buffer.alloc(CHUNK))).toBe(true);
    s.close();
  });
  it('writes a short copy between whole ones (a last chunk shorter than the chunk size)', async () => {
    const { space: s, files } = space([8]);
    const writer = new SlotWriter(s);
    const short = Buffer.alloc(CHUNK / 2, 0x5e);
    await Promise.all([writer.write(2, fill(0x33)), writer.write(3, short), writer.write(4, fill(0x55))]);
    const file = readFileSync(files[0] as string);
    const at = (slot: number) => RESERVED + slot * CHUNK;
    expect(file.subarray(at(2), at(3)).equals(fill(0x33))).toBe(true);
    expect(file.subarray(at(3), at(3) + CHUNK / 2).equals(short)).toBe(true);
    expect(file.subarray(at(4), at(5)).equals(fill(0x55))).toBe(true);
    s.close();
  });
  it('keeps the order of writes to one slot (the last one wins)', async () => {
    const { space: s, files } = space([4]);
    const writer = new SlotWriter(s);
    await Promise.all([writer.write(1, fill(0xa1)), writer.write(1, fill(0xa2)), writer.write(2, fill(0xb1))]);
    const file = readFileSync(files[0] as string);
    expect(file.subarray(RESERVED + CHUNK, RESERVED + 2 * CHUNK).equals(fill(0xa2))).toBe(true);
    expect(file.subarray(RESERVED + 2 * CHUNK, RESERVED + 3 * CHUNK).equals(fill(0xb1))).toBe(true);
    s.close();
  });
  it('fails the writes of a group that cannot be written, and only those', async () => {
    const { space: s } = space([4]);
    const writer = new SlotWriter(s);
    const good = writer.write(0, fill(1));
    const bad = writer.write(9, fill(2)); // no such slot
    // both awaited at once: the bad one may fail before the good one is written
    const [g, b] = await Promise.allSettled([good, bad]);
    expect(g.status).toBe('fulfilled');
    expect(b.status === 'rejected' ? String(b.reason) : 'written').toMatch(/does not exist/);
    s.close();
  });
});
