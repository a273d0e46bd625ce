/**
 * The clean-stop mark: a graceful stop records in range 0 where the journal ends (after its
 * CLEAN batch), and the next start checks the journal ends exactly there. The end of the journal
 * lost after a clean stop (its last sectors read as zeros, which replay alone would take for a
 * crash's torn tail) is refused; a crash after a start is not mistaken for a clean stop.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeRecord } from '../../src/store/records.ts';
import { StoreSpace } from '../../src/store/space.ts';
import { DiffStore } from '../../src/store/store.ts';
import { tempDir } from '../helpers/server.ts';
import { makeSparse } from '../helpers/snapshots.ts';

const CS = 4096;
const dir = tempDir('nbdsnap-clean-stop-');
afterAll(() => dir.cleanup());

const device = { type: 'DEVICE' as const, device: 1, size: 1 << 20, name: 'disk' };

/** A store with one committed record, stopped gracefully. */
async function cleanlyStopped(name: string) {
  const ranges = [StoreSpace.resolve(makeSparse(join(dir.path, name), 128 * 1024 + 64 * CS))];
  const first = await DiffStore.open(ranges, { transient: false, chunkSize: CS });
  await first.store.commit([device]);
  await first.store.close();
  return ranges;
}

describe('the clean-stop mark', () => {
  it('a clean stop followed by a start: the journal ends where the mark says', async () => {
    const ranges = await cleanlyStopped('ok.img');
    const again = await DiffStore.open(ranges, { transient: false });
    expect(again.report?.reason).toBe('clean');
    expect(again.records.map((r) => r.type)).toEqual(['DEVICE']);
    await again.store.commit([{ ...device, device: 2, name: 'other' }]);
    again.store.space.close(); // a crash: the mark was cleared at start, so nothing is checked against it
    const afterCrash = await DiffStore.open(ranges, { transient: false });
    expect(afterCrash.report?.reason).toBe('end');
    expect(afterCrash.records.map((r) => r.type)).toEqual(['DEVICE', 'DEVICE']);
    await afterCrash.store.close();
  });

  it('the CLEAN batch lost after a clean stop (read as zeros) is refused, not taken for a crash', async () => {
    const ranges = await cleanlyStopped('lost.img');
    const ro = await DiffStore.open(ranges, { transient: false, readOnly: true });
    const stop = ro.report?.stop as { slot: number; offset: number };
    const at = ro.store.space.locate(stop.slot);
    await ro.store.close();
    // The CLEAN batch (a CLEAN record and its COMMIT) lost: its bytes read as zeros, as if never
    // written. Replay alone sees a journal that ends after the batch before it, like a crash.
    const batch =
      encodeRecord({ type: 'CLEAN', at: 0 }, 1).length +
      encodeRecord({ type: 'COMMIT', firstSeq: 1, count: 1, chain: 0 }, 2).length;
    const end = at.offset + stop.offset;
    const from = end - batch;
    const fd = openSync(at.path, 'r+');
    writeSync(fd, Buffer.alloc(end - from), 0, end - from, from);
    closeSync(fd);
    await expect(DiffStore.open(ranges, { transient: false })).rejects.toThrow(/stopped cleanly at journal record/);
    // A refused start writes nothing that would hide the damage from the next one.
    await expect(DiffStore.open(ranges, { transient: false })).rejects.toThrow(/stopped cleanly/);
    await expect(DiffStore.open(ranges, { transient: false, readOnly: true })).rejects.toThrow(/stopped cleanly/);
  });
});
