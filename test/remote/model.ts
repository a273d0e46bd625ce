/**
 * A model of an origin under concurrent writes: `lanes` writers, each writing 4 KiB blocks of its
 * own (block % lanes === lane), one request at a time, so every block's history is a sequence.
 * A logical clock ticks at every send and every answer; a snapshot taken between ticks `from` and
 * `to` must read, for each block, its last write answered before `from`, or (only if one was in
 * flight across the snapshot) that write.
 */
import type { NbdClient } from '../../src/client/nbd-client.ts';

export const BLOCK = 4096;

interface WriteRecord {
  block: number;
  seed: number;
  sent: number;
  answered: number;
  ok: boolean;
}

export const blockData = (seed: number): Buffer => {
  const b = Buffer.alloc(BLOCK);
  for (let i = 0; i < BLOCK; i += 4) b.writeUInt32LE((seed * 2654435761 + i) >>> 0, i);
  return b;
};

export class WriteModel {
  clock = 0;
  readonly writes: WriteRecord[] = [];
  private seed = 1;
  private stop = false;
  readonly blocks: number;
  readonly base: Buffer;

  constructor(base: Buffer) {
    this.base = base;
    this.blocks = base.length / BLOCK;
  }

  /** Write until `halt()`, or `count` writes per lane; errors are recorded, not thrown. */
  async run(c: NbdClient, lanes: number, count = Number.POSITIVE_INFINITY): Promise<void> {
    const lane = async (l: number) => {
      for (let n = 0; n < count && !this.stop; n++) {
        const per = Math.floor(this.blocks / lanes);
        const block = l + lanes * Math.floor(Math.random() * per);
        const rec: WriteRecord = { block, seed: this.seed++, sent: this.clock++, answered: -1, ok: false };
        this.writes.push(rec);
        try {
          await c.write(block * BLOCK, blockData(rec.seed));
          rec.ok = true;
        } catch {
          rec.ok = false;
        }
        rec.answered = this.clock++;
      }
    };
    await Promise.all(Array.from({ length: lanes }, (_, l) => lane(l)));
  }

  halt(): void {
    this.stop = true;
  }

  /** Take a snapshot with `take`, noting the clock around it. */
  async around<T>(take: () => Promise<T>): Promise<{ from: number; to: number; value: T }> {
    const from = this.clock++;
    const value = await take();
    return { from, to: this.clock++, value };
  }

  /**
   * Blocks of `got` that do not read as the model allows at a point between `from` and `to`
   * (`to` = Infinity: the current state, where a failed write may or may not have landed).
   */
  mismatches(got: Buffer, from: number, to: number): number[] {
    const bad: number[] = [];
    const byBlock = new Map<number, WriteRecord[]>();
    for (const w of this.writes) {
      const list = byBlock.get(w.block) ?? [];
      list.push(w);
      byBlock.set(w.block, list);
    }
    for (let b = 0; b < this.blocks; b++) {
      const actual = got.subarray(b * BLOCK, (b + 1) * BLOCK);
      const allowed: Buffer[] = [];
      let last: Buffer = this.base.subarray(b * BLOCK, (b + 1) * BLOCK);
      for (const w of byBlock.get(b) ?? []) {
        const before = w.answered !== -1 && w.answered < from;
        if (before && w.ok) {
          last = blockData(w.seed);
          allowed.length = 0; // a write answered later than a failed one replaces it
        } else if (before)
          allowed.push(blockData(w.seed)); // EIO: it may have landed
        else if (w.sent < to) allowed.push(blockData(w.seed)); // in flight across the point
      }
      allowed.push(last);
      if (!allowed.some((a) => a.equals(actual))) bad.push(b);
    }
    return bad;
  }

  get acknowledged(): number {
    return this.writes.filter((w) => w.ok).length;
  }
  get failed(): number {
    return this.writes.filter((w) => w.answered !== -1 && !w.ok).length;
  }
}
