/**
 * Injected I/O faults for tests of the write path (no server): the next chunk copy's write fails
 * the way the store reports it, through the native one-job commit (src/native/commit.c) when the
 * helper is built, else through the store's slot writes.
 */
import { vi } from 'vitest';
import { native } from '../../src/block/native.ts';
import { NbdsnapError } from '../../src/errors.ts';

interface SlotWrites {
  writeSlot(...args: never[]): Promise<unknown>;
  writeRun?(...args: never[]): Promise<unknown>;
}

/**
 * The next copy write fails with EIO: with the native helper, writeAndSync reports its first
 * buffer failed and the rest cancelled (nothing synced); without it, `space`'s writeSlot (and
 * writeRun, when it has one) reject once. Returns the injected error.
 */
export function failNextCopyWrite(space: SlotWrites): NbdsnapError {
  const injected = new NbdsnapError('EIO', 'injected copy write error');
  if (native?.writeAndSync !== undefined) {
    vi.spyOn(native, 'writeAndSync').mockImplementationOnce((_fd, buffers, _offsets, _n, _syncFds, done) => {
      const cancelled = Object.assign(new Error('cancelled'), { code: 'ECANCELED' });
      setImmediate(() =>
        done(
          buffers.map((_, i) => (i === 0 ? injected : cancelled)),
          cancelled,
        ),
      );
    });
  } else {
    vi.spyOn(space as { writeSlot: SlotWrites['writeSlot'] }, 'writeSlot').mockRejectedValueOnce(injected);
    if (space.writeRun !== undefined)
      vi.spyOn(space as { writeRun: NonNullable<SlotWrites['writeRun']> }, 'writeRun').mockRejectedValueOnce(injected);
  }
  return injected;
}
