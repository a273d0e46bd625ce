/**
 * `DiffStore.append` in process, with range 0's record write made to fail (as a crash between the
 * two writes would leave it): the new range is labelled but not recorded, so it is not part of
 * the store; appended again, it is taken back (labelled with this store's uuid and the next
 * index); a different range appended in its place instead gets that index, and the first one,
 * given at the next open, is refused as not the range the store recorded there.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { StoreSpace } from '../../src/store/space.ts';
import { DiffStore } from '../../src/store/store.ts';
import { KiB, MiB, makeSparse, outcome, tempDir } from '../helpers/snapshots.ts';

const dir = tempDir('nbdsnap-append-');
afterAll(() => dir.cleanup());
const range = (name: string, size: number) => StoreSpace.resolve(makeSparse(join(dir.path, name), size));

/** Make the next write of range 0's label (the record) fail. */
function failNextRecord(store: DiffStore): void {
  const space = store.space;
  const writeLabel = space.writeLabel.bind(space);
  let armed = true;
  space.writeLabel = async (index: number, data: Buffer, offset: number) => {
    if (index === 0 && armed) {
      armed = false;
      throw Object.assign(new Error('injected: EIO'), { code: 'EIO' });
    }
    return writeLabel(index, data, offset);
  };
}

describe('an append whose record write failed', () => {
  it('is not part of the store, and is taken back when appended again', async () => {
    const first = range('a0.img', 128 * KiB + 16 * 4 * KiB);
    const second = range('a1.img', MiB);
    const { store } = await DiffStore.open([first], { chunkSize: 4 * KiB, transient: false });
    const total = store.totalSlots;
    failNextRecord(store);
    expect(await outcome(store.append(second))).toBe('EIO');
    expect(store.totalSlots).toBe(total);
    expect(store.status().ranges).toHaveLength(1);
    await store.append(second); // labelled as range 1 by the failed append: taken back
    expect(store.status().ranges.map((r) => r.path)).toEqual([first.path, second.path]);
    store.close();
    const reopened = await DiffStore.open([first], { transient: false });
    expect(reopened.store.status().ranges.map((r) => r.path)).toEqual([first.path, second.path]);
    reopened.store.close();
  });

  it('a crashed append given at the next start is appended then', async () => {
    const first = range('c0.img', 128 * KiB + 16 * 4 * KiB);
    const second = range('c1.img', MiB);
    const { store } = await DiffStore.open([first], { chunkSize: 4 * KiB, transient: false });
    failNextRecord(store);
    expect(await outcome(store.append(second))).toBe('EIO');
    store.close();
    const reopened = await DiffStore.open([first, second], { transient: false });
    expect(reopened.store.status().ranges.map((r) => r.path)).toEqual([first.path, second.path]);
    reopened.store.close();
  });

  it('another range appended in its place gets its index; the first one is then refused', async () => {
    const first = range('b0.img', 128 * KiB + 16 * 4 * KiB);
    const lost = range('b1.img', MiB);
    const other = range('b2.img', MiB);
    const { store } = await DiffStore.open([first], { chunkSize: 4 * KiB, transient: false });
    failNextRecord(store);
    expect(await outcome(store.append(lost))).toBe('EIO');
    await store.append(other);
    expect(store.status().ranges.map((r) => r.path)).toEqual([first.path, other.path]);
    store.close();
    const err = await DiffStore.open([first, lost], { transient: false }).then(
      () => undefined,
      (e: Error) => e.message,
    );
    expect(err).toMatch(/b1\.img.* is labelled range 1 of store .*, but not the range the store recorded there/);
    const again = await DiffStore.open([first, other], { transient: false });
    expect(again.store.status().ranges.map((r) => r.path)).toEqual([first.path, other.path]);
    again.store.close();
  });
});
