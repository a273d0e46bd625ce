/**
 * The origin export's top layer while a merge runs (see merge.ts): reads of chunks not merged
 * yet come from the snapshot's copies in the store; a write to such a chunk first merges it.
 */
import { type BlockDevice, Layer, type ZeroOptions } from '../block/device.ts';
import type { Extent } from '../nbd-protocol/index.ts';
import type { MergeJob } from './merge.ts';
import { readCopy } from './merge-read.ts';

/** The origin export's top layer: passes through, except while a merge runs on the device. */
export class MergeLayer extends Layer {
  job: MergeJob | undefined;
  private storeReads = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(next: BlockDevice) {
    super(next);
  }

  /** Resolves once no read that started from the store is in flight (before freeing its slots). */
  idle(): Promise<void> {
    if (this.storeReads === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  override async read(offset: number, length: number): Promise<Buffer> {
    const job = this.job;
    if (job === undefined) return this.next.read(offset, length);
    const origin = job.snapshot.origin;
    const chunks = origin.chunksOf(offset, length);
    if (!chunks.some((c) => job.pending(c))) return this.next.read(offset, length);
    this.storeReads += 1;
    try {
      return await this.mixedRead(job, offset, length);
    } finally {
      this.storeReads -= 1;
      if (this.storeReads === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Chunk by chunk, from the snapshot's copy where the merge has not got to yet. */
  private async mixedRead(job: MergeJob, offset: number, length: number): Promise<Buffer> {
    const origin = job.snapshot.origin;
    const chunks = origin.chunksOf(offset, length);
    if (chunks.length === 1) {
      // Within one chunk (most reads): the part of the verified copy, with no second buffer.
      const c = chunks[0] as number;
      const src = origin.table.resolve(c, job.snapshot);
      if (src.from !== 'store') return this.next.read(offset, length);
      const data = await readCopy(job.store, c, src.copy, origin.chunkLength(c), job.damaged);
      const at = offset - c * origin.chunkSize;
      return data.subarray(at, at + length);
    }
    const out = Buffer.allocUnsafe(length);
    await Promise.all(
      chunks.map(async (c) => {
        const start = Math.max(offset, c * origin.chunkSize);
        const end = Math.min(offset + length, (c + 1) * origin.chunkSize);
        const src = origin.table.resolve(c, job.snapshot);
        if (job.pending(c) && src.from === 'store') {
          const data = await readCopy(job.store, c, src.copy, origin.chunkLength(c), job.damaged);
          const at = start - c * origin.chunkSize;
          data.copy(out, start - offset, at, at + end - start);
        } else (await this.next.read(start, end - start)).copy(out, start - offset);
      }),
    );
    return out;
  }

  override write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    if (this.job === undefined) return this.next.write(offset, data, fua); // no merge: no async frame per write
    return this.mergeFirst(offset, data.length).then(() => this.next.write(offset, data, fua));
  }

  override async writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    await this.mergeFirst(offset, length);
    return this.next.writeZeroes(offset, length, options);
  }

  override async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.mergeFirst(offset, length);
    return this.next.trim(offset, length, fua);
  }

  override async extents(offset: number, length: number) {
    const job = this.job;
    if (job === undefined) return this.next.extents(offset, length);
    // While merging, chunks still in the store are data; elsewhere the origin's own view, but
    // only up to the next chunk still to merge (the origin may have a hole where the snapshot
    // has data: reporting it would let a client skip that data as zeroes).
    const origin = job.snapshot.origin;
    const cs = origin.chunkSize;
    const first = Math.floor(offset / cs);
    const end = Math.min(origin.size, offset + length);
    if (job.pending(first)) return [{ length: Math.min(end, (first + 1) * cs) - offset, flags: 0 }];
    const next = job.nextPending(first + 1);
    const stop = next === undefined ? end : Math.min(end, next * cs);
    const out: Extent[] = [];
    let covered = 0;
    for (const e of await this.next.extents(offset, stop - offset)) {
      const take = Math.min(e.length, stop - offset - covered);
      if (take <= 0) break;
      out.push({ length: take, flags: e.flags });
      covered += take;
    }
    return out;
  }

  private async mergeFirst(offset: number, length: number): Promise<void> {
    const job = this.job;
    if (job === undefined) return;
    for (const c of job.snapshot.origin.chunksOf(offset, length)) {
      if (job.pending(c)) await job.mergeChunk(c);
    }
  }
}
