/**
 * Chunk copies that go out with the journal batch recording them (journal.ts, `append(records,
 * copies)`): the copies, then the batch's records, then the store's sync, as ONE job on the
 * thread pool (`native.writeAndSync`, src/native/commit.c). A first write used to take two
 * hand-offs in turn (the copy's write, then the batch's sync), each a wake-up of a pool thread
 * and of the event loop, which on a loaded machine each wait for a CPU.
 *
 * The order on disk is unchanged: the records are written only once every copy of the batch is
 * in the file, and acknowledged only after the sync. A copy whose write fails is not recorded:
 * its writer gets an error marked as a copy-write failure (`isCopyWriteFailure`), which is not a
 * failure of the store (the snapshots needing the copy are invalidated, the origin write goes
 * on), and the batch is written again without it.
 */
import { native } from '../block/native.ts';
import { errorMessage, NbdsnapError } from '../errors.ts';
import type { StoreSpace } from './space.ts';

/** A whole-slot copy: `data` is exactly one chunk. */
export interface SlotData {
  slot: number;
  data: Buffer;
}

const failures = new WeakSet<object>();

/** `err` (a failed copy write) as the error its writer gets, marked as a copy-write failure. */
export function copyWriteFailure(err: unknown): NbdsnapError {
  const e = new NbdsnapError('EIO', `writing the copy to the difference store failed: ${errorMessage(err)}`, {
    cause: err,
  });
  failures.add(e);
  return e;
}

/** Whether `err`, or an error it was caused by, is a copy-write failure (not the store's). */
export function isCopyWriteFailure(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) if (failures.has(e)) return true;
  return false;
}

export interface CommitOutcome {
  /** Per copy: undefined when written; an Error when its write failed; 'retry' when not tried. */
  copies: (Error | 'retry' | undefined)[];
  /** The journal's bytes or the sync failed (fail-stop), or undefined. */
  failure: Error | undefined;
}

/**
 * Write `copies` (sorted by offset, so neighbours join in one pwritev), then `bytes` at `offset`
 * (the journal's), then sync the store, in one pool job on descriptor `fd`. Stops at the first
 * failed write (nothing after it is written or synced).
 */
export function writeAndSync(
  space: StoreSpace,
  target: { fd: number; syncFds: number[] },
  copies: readonly SlotData[],
  journal: { offset: number; bytes: Buffer },
): Promise<CommitOutcome> {
  const run = native?.writeAndSync;
  if (run === undefined) return Promise.reject(new NbdsnapError('EIO', 'the native helper has no writeAndSync'));
  const order = copies.map((_, i) => i).sort((a, b) => (copies[a] as SlotData).slot - (copies[b] as SlotData).slot);
  const buffers = order.map((i) => (copies[i] as SlotData).data);
  const offsets = order.map((i) => space.slotOffset((copies[i] as SlotData).slot));
  buffers.push(journal.bytes);
  offsets.push(journal.offset);
  return new Promise((resolve) => {
    run(target.fd, buffers, offsets, order.length, target.syncFds, (errors, syncError) => {
      const out: CommitOutcome['copies'] = new Array(copies.length);
      for (let k = 0; k < order.length; k++) {
        const err = errors[k];
        out[order[k] as number] = err === undefined ? undefined : isCancelled(err) ? 'retry' : err;
      }
      const last = errors[order.length];
      const failure = last !== undefined && !isCancelled(last) ? last : isCancelled(syncError) ? undefined : syncError;
      resolve({ copies: out, failure });
    });
  });
}

const isCancelled = (err: Error | undefined): boolean => (err as { code?: string } | undefined)?.code === 'ECANCELED';
