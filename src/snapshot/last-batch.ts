/**
 * After a crash, the copies of the journal's last batch whose data does not match their
 * checksums (store.ts hands them over as `suspect`). The store commits with one sync for data and
 * records together, so such a copy is either a write cut short by the crash (its sync never
 * returned: the origin write it guarded never happened) or a copy damaged after an acknowledged
 * commit. The batch is kept either way; each copy is settled here, before anything is served:
 *
 * - a shared copy (EXCEPTION) whose origin chunk still has the recorded checksum: the origin
 *   still holds exactly what was to be copied, so the copy is written again from it (repaired);
 * - otherwise (the origin was overwritten, or the device is not served now, or a writable
 *   snapshot's own chunk): the copy is recorded lost, so its readers answer EIO and list it
 *   damaged. Never wrong bytes, and nothing the batch recorded is forgotten.
 */
import type { BlockDevice } from '../block/device.ts';
import { errorMessage } from '../errors.ts';
import type { Logger } from '../log.ts';
import { checksum } from '../store/checksum.ts';
import type { DiffStore } from '../store/store.ts';
import type { DataRecord } from '../store/verify.ts';
import type { Catalog } from './catalog.ts';
import type { DamageLog } from './damage.ts';
import type { Copy } from './exception-table.ts';
import type { OriginState } from './model.ts';

export interface SettleParts {
  catalog: Catalog;
  store: DiffStore;
  damage: DamageLog;
  log: Logger;
  /** The served device of a name (below the copy-on-write layer), if it is served now. */
  device(name: string): BlockDevice | undefined;
}

/** Settle every suspect copy; resolves once each is repaired (durably) or recorded lost. */
export async function settleSuspectCopies(suspect: readonly DataRecord[], parts: SettleParts): Promise<void> {
  for (const rec of suspect) {
    if (rec.type === 'EXCEPTION') await settleCopy(rec, parts);
    else {
      const snap = parts.catalog.snapshots.get(rec.snapshot);
      const own = snap?.privateChunks.get(rec.chunk);
      if (snap === undefined || own === undefined || own.slot !== rec.slot) continue;
      parts.log.error('a writable snapshot chunk written before a crash does not hold its data: lost', {
        snapshot: `${snap.origin.name}@${snap.name}`,
        chunk: rec.chunk,
      });
      await parts.damage.record(snap.origin, rec.chunk, own);
    }
  }
}

async function settleCopy(rec: Extract<DataRecord, { type: 'EXCEPTION' }>, parts: SettleParts): Promise<void> {
  const origin = parts.catalog.origins.get(rec.device);
  const copy = origin === undefined ? undefined : findCopy(origin, rec);
  if (origin === undefined || copy === undefined || copy.lost) return; // freed since, or known lost
  const device = parts.device(origin.name);
  const where = { device: origin.name, chunk: rec.chunk, slot: rec.slot };
  if (device !== undefined) {
    let data: Buffer | undefined;
    try {
      data = await device.read(rec.chunk * origin.chunkSize, origin.chunkLength(rec.chunk));
    } catch (err) {
      parts.log.error('could not read the origin to repair a copy', { ...where, err: errorMessage(err) });
    }
    if (data !== undefined && (checksum(data) | 0) === (copy.crc | 0)) {
      await parts.store.writeSlot(rec.slot, data);
      await parts.store.sync();
      parts.log.warn('a copy cut short by a crash was written again from the origin', where);
      return;
    }
  }
  parts.log.error('a copy made before a crash does not hold its data, and the origin has changed: lost', where);
  await parts.damage.record(origin, rec.chunk, copy);
}

/** The copy a record made, if the table still holds it (the first copy with seq >= its seq). */
function findCopy(origin: OriginState, rec: { chunk: number; seq: number; slot: number }): Copy | undefined {
  const v = origin.table.find(rec.chunk, rec.seq);
  return v?.slot === rec.slot ? v : undefined;
}
