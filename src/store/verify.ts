/**
 * Checking chunk data against the checksums the journal recorded for it.
 *
 * - `readVerified`: read a copy (its chunk length) and return it only if its checksum matches.
 * - `verifyBatchData`: at replay, the data of the journal's last batch is read back and compared
 *   with the batch's EXCEPTION and PRIVATE checksums (with one sync per batch, data and records
 *   become durable together, so a crash can leave records whose data never reached the disk).
 *   The length of a device's last chunk can be short, so the checksum length comes from the
 *   DEVICE (size) and SNAPSHOT (snapshot -> device) records replayed so far: `chunkLengths`.
 */
import { checksum } from './checksum.ts';
import type { JournalRecord } from './records.ts';

interface SlotReader {
  readonly chunkSize: number;
  readSlot(slot: number, length: number, offsetInSlot?: number): Promise<Buffer>;
}

/** The first `length` bytes of `slot` if their checksum is `crc` (u32 or int32), else undefined. */
export async function readVerified(
  store: SlotReader,
  slot: number,
  crc: number,
  length: number,
): Promise<Buffer | undefined> {
  const data = await store.readSlot(slot, length);
  return (checksum(data) | 0) === (crc | 0) ? data : undefined;
}

type DataRecord = Extract<JournalRecord, { type: 'EXCEPTION' | 'PRIVATE' }>;

/** Bytes covered by the checksum of a data record, or undefined for a device or snapshot not known. */
export type ChunkLength = (rec: DataRecord) => number | undefined;

/** Chunk lengths from the device sizes in `records` (every record replayed up to and with the batch). */
export function chunkLengths(records: readonly JournalRecord[], chunkSize: number): ChunkLength {
  const sizes = new Map<number, number>();
  const deviceOf = new Map<number, number>();
  for (const r of records) {
    if (r.type === 'DEVICE') sizes.set(r.device, r.size);
    else if (r.type === 'SNAPSHOT') for (const m of r.members) deviceOf.set(m.snapshot, m.device);
  }
  return (rec) => {
    const device = rec.type === 'EXCEPTION' ? rec.device : deviceOf.get(rec.snapshot);
    const size = device === undefined ? undefined : sizes.get(device);
    if (size === undefined) return undefined;
    return Math.max(0, Math.min(chunkSize, size - rec.chunk * chunkSize));
  };
}

/**
 * Whether every chunk the batch's EXCEPTION and PRIVATE records point to holds the data they
 * recorded. A record whose chunk length is unknown (its device's DEVICE record not given) is not
 * checked: dropping its batch could forget acknowledged copies, while keeping a batch whose data
 * is wrong cannot serve wrong bytes (every read of a copy checks it again: EIO, LOST).
 */
export async function verifyBatchData(
  space: SlotReader,
  records: readonly JournalRecord[],
  chunkLength: ChunkLength,
): Promise<boolean> {
  for (const rec of records) {
    if (rec.type !== 'EXCEPTION' && rec.type !== 'PRIVATE') continue;
    const length = chunkLength(rec);
    if (length === undefined) continue;
    if ((await readVerified(space, rec.slot, rec.crc, length)) === undefined) return false;
  }
  return true;
}
