/**
 * Reading a merge run's copies from the store: one read per stretch of neighbouring store slots
 * (copies of consecutive chunks often sit next to each other in the store), each chunk then
 * checked against its checksum. A damaged or lost copy is recorded (`damaged`) and fails the
 * read with an error naming the chunk (`failedChunk`): it is never written into the origin.
 */
import { NbdsnapError } from '../errors.ts';
import { checksum } from '../store/checksum.ts';
import type { DiffStore } from '../store/store.ts';
import { damagedCopyError } from './damage.ts';
import type { Copy } from './exception-table.ts';
import type { Snapshot } from './model.ts';

/** The chunk whose merge threw each error (the error itself is passed on unchanged). */
export const failedChunk = new WeakMap<object, number>();

/** Runs `work` for `chunk`, noting the chunk against what it throws. */
export async function forChunk<T>(chunk: number, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (typeof err === 'object' && err !== null && !failedChunk.has(err)) failedChunk.set(err, chunk);
    throw err;
  }
}

type Damaged = (chunk: number, copy: Copy) => Promise<void>;

/** A chunk's store copy, whole and verified (a mismatch is recorded before the EIO). */
export async function readCopy(
  store: DiffStore,
  chunk: number,
  copy: Copy,
  length: number,
  damaged: Damaged,
): Promise<Buffer> {
  const data = copy.lost ? undefined : await store.readSlot(copy.slot, length);
  if (data === undefined || (checksum(data) | 0) !== (copy.crc | 0))
    throw await damagedCopyError('', chunk, copy, damaged);
  return data;
}

/**
 * The verified copies of `chunks` (ascending) of `snapshot`, one buffer per stretch of chunks
 * that are consecutive on the device and whose copies are neighbours in one store range.
 * Returns the parts in order; their lengths add up to the chunks' lengths.
 */
export async function readRun(
  store: DiffStore,
  snapshot: Snapshot,
  chunks: readonly number[],
  damaged: Damaged,
): Promise<Buffer[]> {
  const origin = snapshot.origin;
  const copies = chunks.map((c) => {
    const src = origin.table.resolve(c, snapshot);
    if (src.from !== 'store') {
      const err = new NbdsnapError('EIO', `chunk ${c} lost its store copy during the merge`);
      failedChunk.set(err, c);
      throw err;
    }
    return src.copy;
  });
  // Stretches [from, to) of neighbouring copies.
  const stretches: [number, number][] = [];
  let from = 0;
  let where = copies[0] === undefined || copies[0].lost ? undefined : store.space.locate(copies[0].slot);
  for (let k = 1; k <= chunks.length; k++) {
    const copy = copies[k];
    const at = copy === undefined || copy.lost ? undefined : store.space.locate(copy.slot);
    const joins =
      at !== undefined &&
      where !== undefined &&
      chunks[k] === (chunks[k - 1] as number) + 1 &&
      at.path === where.path &&
      at.offset === where.offset + store.chunkSize;
    if (!joins) {
      stretches.push([from, k]);
      from = k;
    }
    where = at;
  }
  return Promise.all(
    stretches.map(async ([a, b]) => {
      if (b - a === 1) {
        const c = chunks[a] as number;
        return forChunk(c, () => readCopy(store, c, copies[a] as Copy, origin.chunkLength(c), damaged));
      }
      const last = chunks[b - 1] as number;
      const length = (b - a - 1) * store.chunkSize + origin.chunkLength(last);
      let data: Buffer;
      try {
        data = await store.readSlot((copies[a] as Copy).slot, length);
      } catch {
        // Again chunk by chunk: the error then names the chunk whose copy cannot be read.
        const parts: Buffer[] = [];
        for (let k = a; k < b; k++) {
          const c = chunks[k] as number;
          parts.push(await forChunk(c, () => readCopy(store, c, copies[k] as Copy, origin.chunkLength(c), damaged)));
        }
        return Buffer.concat(parts);
      }
      for (let k = a; k < b; k++) {
        const c = chunks[k] as number;
        const off = (k - a) * store.chunkSize;
        const piece = data.subarray(off, off + origin.chunkLength(c));
        const copy = copies[k] as Copy;
        if ((checksum(piece) | 0) !== (copy.crc | 0)) {
          const err = await damagedCopyError('', c, copy, damaged);
          failedChunk.set(err, c);
          throw err;
        }
      }
      return data;
    }),
  );
}
