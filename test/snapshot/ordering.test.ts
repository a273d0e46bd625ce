/**
 * Ordering rules of the data-safety core that a crash test can only hit by luck, checked in
 * process by widening the window they guard (a slow journal commit, a slow superblock write):
 * - an origin write that goes through without its copy because the store is full does so only
 *   once the snapshot's invalidation is durable (otherwise a crash in between brings the snapshot
 *   back "valid" over overwritten data);
 * - a range appended at run time hands out no slot before the superblock records it (otherwise a
 *   crash in between leaves mappings to slots beyond the store);
 * - a range too small for one chunk is refused without being recorded.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { FileDevice } from '../../src/block/file-device.ts';
import { Logger } from '../../src/log.ts';
import { ExportRegistry } from '../../src/server/exports.ts';
import { SnapshotManager } from '../../src/snapshot/manager.ts';
import type { JournalRecord } from '../../src/store/records.ts';
import { StoreSpace } from '../../src/store/space.ts';
import { DiffStore } from '../../src/store/store.ts';
import { KiB, MiB, makeImage, makeSparse, outcome, tempDir } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

const dir = tempDir('nbdsnap-order-');
afterAll(() => dir.cleanup());

describe('overflow', () => {
  it('lets an uncopied origin write through only once the invalidation is durable', async () => {
    const image = makeImage(join(dir.path, 'o1.img'), stampedImage(MiB, 0));
    const device = await FileDevice.open(image);
    const registry = new ExportRegistry();
    const manager = new SnapshotManager(registry, new Logger('silent'), {
      devices: [{ name: 'disk', device, description: '' }],
      store: [StoreSpace.resolve(makeSparse(join(dir.path, 's1.img'), 128 * KiB + 64 * 4 * KiB))],
      chunkSize: 4 * KiB,
      transient: false,
      lowSpacePercent: 10,
      readOnlyOrigins: false,
      cbtBlockSize: 0,
    });
    await manager.start();
    const store = manager.store as DiffStore;
    const log: string[] = [];
    const commit = store.commit.bind(store);
    store.commit = async (records: JournalRecord[]) => {
      if (!records.some((r) => r.type === 'INVALID')) return commit(records);
      log.push('invalidation sent');
      await sleep(100);
      await commit(records);
      log.push('invalidation durable');
    };
    const write = device.write.bind(device);
    device.write = async (offset: number, data: Buffer, fua: boolean) => {
      log.push(`origin write at ${offset}`);
      return write(offset, data, fua);
    };
    const cow = registry.get('disk')?.device;
    if (cow === undefined) throw new Error('no origin export');
    await manager.createSnapshot(['disk'], 's', false);
    while (store.allocate() !== undefined) {
      // fill the store: the next copy has no room
    }
    // Two writes to two chunks at once: neither can be copied.
    await Promise.all([
      cow.write(0, stampedData(1, 0, 4096), false),
      cow.write(8192, stampedData(2, 8192, 4096), false),
    ]);
    expect(log.filter((l) => l.startsWith('invalidation sent'))).toHaveLength(1);
    expect(log.indexOf('invalidation durable')).toBeLessThan(log.indexOf('origin write at 0'));
    expect(log.indexOf('invalidation durable')).toBeLessThan(log.indexOf('origin write at 8192'));
    expect(manager.list().map((s) => s.state)).toEqual(['invalid']);
    // Both writes landed.
    const now = await device.read(0, 12288);
    expect(now.subarray(0, 4096).equals(stampedData(1, 0, 4096))).toBe(true);
    expect(now.subarray(8192).equals(stampedData(2, 8192, 4096))).toBe(true);
    await manager.close();
    await device.close();
  });
});

describe('store append', () => {
  it('hands out no slot of a new range before the superblock records it', async () => {
    const first = StoreSpace.resolve(makeSparse(join(dir.path, 'a1.img'), 128 * KiB + 8 * 4 * KiB));
    const second = StoreSpace.resolve(makeSparse(join(dir.path, 'a2.img'), MiB));
    const { store } = await DiffStore.open([first], { chunkSize: 4 * KiB, transient: false });
    while (store.allocate() !== undefined) {
      // fill the store
    }
    const space = store.space;
    const writeLabel = space.writeLabel.bind(space);
    let recorded = false;
    space.writeLabel = async (index: number, data: Buffer, offset: number) => {
      await sleep(100);
      await writeLabel(index, data, offset);
      await space.sync();
      recorded = true;
    };
    const appending = store.append(second);
    // While the superblock update is on its way, the new slots must not be used.
    await sleep(20);
    expect(recorded).toBe(false);
    expect(store.allocate()).toBeUndefined();
    await appending;
    expect(store.allocate()).toBeDefined();
    await store.close();
    // And the range is part of the store on the next open.
    const reopened = await DiffStore.open([first], { transient: false });
    expect(reopened.store.status().ranges.map((r) => r.path)).toEqual([first.path, second.path]);
    await reopened.store.close();
  });

  it('refuses a range smaller than a chunk without recording it', async () => {
    const first = StoreSpace.resolve(makeSparse(join(dir.path, 'b1.img'), 128 * KiB + 8 * 64 * KiB));
    const tiny = StoreSpace.resolve(`${makeSparse(join(dir.path, 'b2.img'), MiB)}:0+64`);
    const { store } = await DiffStore.open([first], { chunkSize: 64 * KiB, transient: false });
    expect(await outcome(store.append(tiny))).toBe('BAD_ARGUMENT');
    expect(store.status().ranges).toHaveLength(1);
    await store.close();
    const reopened = await DiffStore.open([first], { transient: false });
    expect(reopened.store.status().ranges).toHaveLength(1);
    await reopened.store.close();
  });
});
