/**
 * What a store range on a remote export holds (probe.ts's question, over NBD): its first bytes
 * judged as for a file, then the zero check, which skips the extents that base:allocation block
 * status reports as reading zeros and reads the rest. Without block status (or with more than
 * READ_LIMIT of data to read) a range without a label is "unchecked": it must be formatted
 * explicitly, as a large block device range must.
 */
import type { BlockDevice } from '../block/device.ts';
import type { RangeContent } from '../store/probe.ts';
import { SIGNATURE_BYTES } from '../store/signatures.ts';
import type { StoreRange } from '../store/space.ts';
import { openRemote } from './remote-ranges.ts';

/** Most bytes read from a remote range to prove it blank. */
export const READ_LIMIT = 4 * 1024 * 1024 * 1024;
const STEP = 1024 * 1024;
/** base:allocation's "reads as zeros" bit. */
const ZERO = 2;
const ZEROES = Buffer.alloc(STEP);

export async function probeRemoteRange(
  range: StoreRange,
  judgeHead: (head: Buffer) => RangeContent | undefined,
): Promise<RangeContent> {
  const device = await openRemote(range.path);
  const head = await device.read(range.start, Math.min(range.length, SIGNATURE_BYTES));
  const judged = judgeHead(head);
  if (judged !== undefined) return judged;
  const zero = await allZero(device, range.start, range.start + range.length);
  return zero === undefined ? { kind: 'unchecked' } : zero ? { kind: 'blank' } : { kind: 'data' };
}

/** Whether [from, to) reads as zeros; undefined: more than READ_LIMIT would have to be read. */
export async function allZero(device: BlockDevice, from: number, to: number): Promise<boolean | undefined> {
  let budget = READ_LIMIT;
  for (let pos = from; pos < to; ) {
    const extents = await device.extents(pos, to - pos);
    for (const e of extents) {
      const end = Math.min(to, pos + e.length);
      if ((e.flags & ZERO) === 0) {
        budget -= end - pos;
        if (budget < 0) return undefined;
        for (let at = pos; at < end; at += STEP) {
          const n = Math.min(STEP, end - at);
          const buf = await device.read(at, n);
          if (!buf.equals(ZEROES.subarray(0, n))) return false;
        }
      }
      pos = end;
      if (pos >= to) break;
    }
  }
  return true;
}
