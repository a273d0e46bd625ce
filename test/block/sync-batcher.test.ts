/**
 * SyncBatcher (src/block/sync-batcher.ts), without a device: callers share syncs, a caller is
 * covered only by a sync that started after it called, and a failed sync fails every later one.
 */
import { describe, expect, it } from 'vitest';
import { SyncBatcher } from '../../src/block/sync-batcher.ts';

/** A sync whose outcomes the test decides, one per started sync. */
function controlled() {
  const started: { resolve: () => void; reject: (e: Error) => void }[] = [];
  const batcher = new SyncBatcher(
    () =>
      new Promise<void>((resolve, reject) => {
        started.push({ resolve, reject });
      }),
  );
  return { batcher, started };
}

const settle = () => new Promise((r) => setImmediate(r));

describe('SyncBatcher', () => {
  it('callers arriving during a sync share the next one', async () => {
    const { batcher, started } = controlled();
    const first = batcher.sync();
    const a = batcher.sync();
    const b = batcher.sync();
    expect(started.length).toBe(1);
    started[0]?.resolve();
    await first;
    await settle();
    expect(started.length).toBe(2);
    started[1]?.resolve();
    await expect(Promise.all([a, b])).resolves.toBeDefined();
    expect(started.length).toBe(2);
  });

  it('a failed sync fails its callers, the queued ones and every later caller, without syncing again', async () => {
    const { batcher, started } = controlled();
    const first = batcher.sync();
    const queued = batcher.sync();
    started[0]?.reject(new Error('EIO from write-back'));
    await expect(first).rejects.toThrow('EIO from write-back');
    await expect(queued).rejects.toThrow('EIO from write-back');
    await expect(batcher.sync()).rejects.toThrow('EIO from write-back');
    expect(started.length).toBe(1);
  });
});
