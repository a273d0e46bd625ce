/**
 * The chunk guard alone: one copy per chunk at a time (concurrent writers wait for it and then
 * find the chunk copied), and snapshot reads from the origin hold back the copy's origin write.
 */
import { describe, expect, it } from 'vitest';
import { ChunkGuard } from '../../../src/snapshot/chunk-guard.ts';

/** Whether `p` has settled after the microtasks queued now have run. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  for (let i = 0; i < 10; i++) await Promise.resolve();
  return done;
}

describe('one copy per chunk', () => {
  it('gives the copy to one writer; the others wait for it, then copy nothing', async () => {
    const guard = new ChunkGuard();
    let copies = 0;
    const copied = new Set<number>();
    let finish!: () => void;
    const slowCopy = new Promise<void>((r) => {
      finish = r;
    });
    // As cow-origin.ts does it: check and claim in one synchronous step, or wait and look again.
    const writer = async (chunk: number) => {
      for (;;) {
        const busy = guard.inProgress(chunk);
        if (busy !== undefined) {
          await busy;
          continue;
        }
        if (copied.has(chunk)) return;
        const done = guard.claim(chunk);
        copies += 1;
        await slowCopy;
        copied.add(chunk);
        done();
        return;
      }
    };
    const writers = [writer(4), writer(4), writer(4), writer(5)];
    expect(await settled(Promise.all(writers))).toBe(false);
    expect(guard.inProgress(4)).toBeDefined();
    expect(guard.inProgress(6)).toBeUndefined();
    finish();
    await Promise.all(writers);
    expect(copies).toBe(2); // chunk 4 once, chunk 5 once
    expect(guard.inProgress(4)).toBeUndefined();
  });
});

describe('readers of the origin', () => {
  it('hold back a copy of their chunk until every one of them is done', async () => {
    const guard = new ChunkGuard();
    const endA = guard.beginRead([1, 2]);
    const endB = guard.beginRead([2]);
    const chunk2 = guard.readersDone(2);
    const chunk1 = guard.readersDone(1);
    expect(await settled(guard.readersDone(3))).toBe(true); // no reader of chunk 3
    expect(await settled(chunk2)).toBe(false);
    endA();
    expect(await settled(chunk1)).toBe(true);
    expect(await settled(chunk2)).toBe(false); // B still reads chunk 2
    endB();
    expect(await settled(chunk2)).toBe(true);
    expect(await settled(guard.readersDone(2))).toBe(true);
  });

  it('counts a chunk read twice by one request as two readers', async () => {
    const guard = new ChunkGuard();
    const end1 = guard.beginRead([7]);
    const end2 = guard.beginRead([7]);
    end1();
    const waiting = guard.readersDone(7);
    expect(await settled(waiting)).toBe(false);
    end2();
    expect(await settled(waiting)).toBe(true);
  });
});
