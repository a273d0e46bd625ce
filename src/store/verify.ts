/**
 * Checking chunk data against the checksums the journal recorded for it.
 *
 * - `readVerified`: read a copy (its chunk length) and return it only if its checksum matches.
 * - `verifyBatchData`: at replay, the data of the journal's last batch is read back and compared
 *   with the batch's EXCEPTION and PRIVATE checksums (with one sync per batch, data and records
 *   become durable together, so a crash can leave records whose data never reached the disk).
 *   The length of a device's last chunk can be short, so the checksum length comes from the
 *   DEVICE (size) and SNAPSHOT (snapshot -> device) records replayed so far (`chunkLengths`),
 *   which also leaves out the records whose slots may have been freed and reused since.
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

export type DataRecord = Extract<JournalRecord, { type: 'EXCEPTION' | 'PRIVATE' }>;

/** Bytes covered by the checksum of a data record of the batch, or undefined: not to be checked. */
export type ChunkLength = (rec: DataRecord) => number | undefined;

/**
 * Chunk lengths for the data records of `batch`, from the records replayed before it and the
 * batch itself (device sizes, snapshots, earlier copies). Only a record whose slot the state
 * after the batch certainly still references gets a length: a copy no live snapshot reads any
 * more (deleted or invalidated, in this batch or before) or a private chunk written again was
 * freed, and its slot may rightly hold other data now; checking it could drop a batch that was
 * acknowledged. A copy's readers are the live snapshots of its device with a seq in (seq of the
 * chunk's previous copy, its seq]; counted against every earlier copy, pruned ones too, that is
 * a subset of its true readers, so "some reader" is certain.
 */
export function chunkLengths(
  before: readonly JournalRecord[],
  batch: readonly JournalRecord[],
  chunkSize: number,
): ChunkLength {
  const sizes = new Map<number, number>();
  const snaps = new Map<number, { device: number; seq: number; live: boolean }>();
  const key = (a: number, b: number) => `${a}:${b}`;
  const wanted = new Set(batch.flatMap((r) => (r.type === 'EXCEPTION' ? [key(r.device, r.chunk)] : [])));
  const latest = new Map<string, number>();
  const previous = new Map<DataRecord, number>();
  const lastPrivate = new Map<string, DataRecord>();
  for (const r of [...before, ...batch]) {
    if (r.type === 'DEVICE') sizes.set(r.device, r.size);
    else if (r.type === 'SNAPSHOT')
      for (const m of r.members) snaps.set(m.snapshot, { device: m.device, seq: m.seq, live: true });
    else if (r.type === 'DELETE' || r.type === 'INVALID') {
      const s = snaps.get(r.snapshot);
      if (s !== undefined) s.live = false;
    } else if (r.type === 'EXCEPTION' && wanted.has(key(r.device, r.chunk))) {
      previous.set(r, latest.get(key(r.device, r.chunk)) ?? 0);
      latest.set(key(r.device, r.chunk), r.seq);
    } else if (r.type === 'PRIVATE') lastPrivate.set(key(r.snapshot, r.chunk), r);
  }
  const length = (device: number, chunk: number) => {
    const size = sizes.get(device);
    return size === undefined ? undefined : Math.max(0, Math.min(chunkSize, size - chunk * chunkSize));
  };
  return (rec) => {
    if (rec.type === 'PRIVATE') {
      const s = snaps.get(rec.snapshot);
      const current = s?.live === true && lastPrivate.get(key(rec.snapshot, rec.chunk)) === rec;
      return s === undefined || !current ? undefined : length(s.device, rec.chunk);
    }
    const from = previous.get(rec);
    if (from === undefined) return undefined; // not a record of this batch
    for (const s of snaps.values())
      if (s.live && s.device === rec.device && s.seq > from && s.seq <= rec.seq) return length(rec.device, rec.chunk);
    return undefined;
  };
}

/**
 * The batch's EXCEPTION and PRIVATE records whose chunk does not hold the data they recorded. A
 * record `chunkLength` gives no length for is not checked (its slot may rightly hold other data
 * now); keeping a record whose data is wrong cannot serve wrong bytes, since every read of a copy
 * checks it again (EIO, LOST).
 */
export async function mismatchedData(
  space: SlotReader,
  records: readonly JournalRecord[],
  chunkLength: ChunkLength,
): Promise<DataRecord[]> {
  const out: DataRecord[] = [];
  for (const rec of records) {
    if (rec.type !== 'EXCEPTION' && rec.type !== 'PRIVATE') continue;
    const length = chunkLength(rec);
    if (length === undefined) continue;
    if ((await readVerified(space, rec.slot, rec.crc, length)) === undefined) out.push(rec);
  }
  return out;
}

/** Whether every checked chunk of the batch holds the data its record says. */
export async function verifyBatchData(
  space: SlotReader,
  records: readonly JournalRecord[],
  chunkLength: ChunkLength,
): Promise<boolean> {
  return (await mismatchedData(space, records, chunkLength)).length === 0;
}
