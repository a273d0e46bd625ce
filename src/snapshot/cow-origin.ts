/**
 * The copy-on-write origin layer: THE write path of every served device.
 *
 *   NBD WRITE / TRIM / WRITE_ZEROES on the origin export
 *     -> CowOrigin.write()            (this file)
 *        1. wait while a snapshot is being taken (consistency-group hold); record the written
 *           blocks for change tracking if this era has not seen them yet (cbt/)
 *        2. for each chunk the request touches that a live snapshot still reads from the origin:
 *           one copy per chunk (concurrent writers wait for it): read the old chunk, write it to
 *           a store slot, commit the mapping and the data's checksum durably, wait for snapshot
 *           reads still reading that chunk from the origin
 *        3. only then: the origin write itself (next layer: the file)
 *
 * Reads pass straight through. If the store has no room, or reading the old chunk or writing
 * its copy fails, the snapshots that needed the chunk are invalidated (durably) and the origin
 * write still goes ahead: an origin write never fails because a snapshot cannot keep up.
 *
 * Fail-stop: the record that guards the origin write (the copy's EXCEPTION, or the INVALID of
 * the snapshots that needed it) must be durable first. If it cannot be (the journal fails; the
 * store then refuses every later commit), the origin write fails with EIO and the origin keeps
 * what the snapshots still read from it. The copy's slot is then kept (never reused: its record
 * may have reached the disk).
 */
import * as pool from '../block/buffer-pool.ts';
import { type BlockDevice, Layer, type ZeroOptions } from '../block/device.ts';
import { errorMessage, NbdsnapError } from '../errors.ts';
import { probes } from '../metrics/probes.ts';
import { isCopyWriteFailure, type SlotData } from '../store/copy-writes.ts';
import type { JournalRecord } from '../store/records.ts';
import type { DiffStore } from '../store/store.ts';
import { copyChecksum } from './copy-read.ts';
import type { OriginState, Snapshot } from './model.ts';

export interface CowHooks {
  /** Durably mark snapshots invalid; resolves once recorded, rejects (EIO) if it cannot be. */
  invalidate(snapshots: Snapshot[], reason: string): Promise<void>;
  /**
   * Commit records durably, then apply them to the catalog; rejects (EIO) if they cannot be made
   * durable. `copies` (the chunk data the records point to) are written first, in the same batch
   * where the store allows; a copy that cannot be written rejects with a copy-write failure
   * (store/copy-writes.ts) and its records are not committed.
   */
  record(records: JournalRecord[], copies?: readonly SlotData[]): Promise<unknown>;
  /** Change tracking: resolves once the written blocks are recorded (inside the snapshot hold). */
  track(offset: number, length: number): Promise<void>;
}

/** Chunks copied concurrently for one large request. */
const COPY_PARALLELISM = 32;

export class CowOrigin extends Layer {
  readonly state: OriginState;
  private readonly store: DiffStore | undefined;
  private readonly hooks: CowHooks;
  private gate: Promise<void> | undefined;
  private openGate: (() => void) | undefined;
  private inflight = 0;
  private drained: (() => void)[] = [];

  constructor(next: BlockDevice, state: OriginState, store: DiffStore | undefined, hooks: CowHooks) {
    super(next);
    this.state = state;
    this.store = store;
    this.hooks = hooks;
  }

  /** The device below the COW layer (reads that must not be redirected). */
  get base(): BlockDevice {
    return this.next;
  }

  override write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.guarded(offset, data.length, () => this.next.write(offset, data, fua));
  }

  override writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    return this.guarded(offset, length, () => this.next.writeZeroes(offset, length, options));
  }

  override trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.guarded(offset, length, () => this.next.trim(offset, length, fua));
  }

  /** Hold new writes and wait for those in flight (taking a snapshot). Call `release()` after. */
  async hold(): Promise<void> {
    while (this.gate !== undefined) await this.gate;
    this.gate = new Promise((resolve) => {
      this.openGate = resolve;
    });
    if (this.inflight > 0) await new Promise<void>((resolve) => this.drained.push(resolve));
  }

  release(): void {
    const open = this.openGate;
    this.gate = undefined;
    this.openGate = undefined;
    open?.();
  }

  private async guarded(offset: number, length: number, op: () => Promise<void>): Promise<void> {
    while (this.gate !== undefined) await this.gate;
    this.inflight += 1;
    try {
      // Tracking and copying are independent: both must be durable before the write, not in order.
      // If one fails the write fails, but only once the other is over too (nothing in flight).
      const tracked = this.hooks.track(offset, length);
      if (this.state.live.length > 0) await allSettled([tracked, this.preserve(offset, length)]);
      else await tracked;
      await op();
    } finally {
      this.inflight -= 1;
      if (this.inflight === 0) {
        const waiters = this.drained;
        this.drained = [];
        for (const w of waiters) w();
      }
    }
  }

  /** Make sure every chunk of the range that a live snapshot reads from the origin is copied. */
  private async preserve(offset: number, length: number): Promise<void> {
    const chunks = this.state.chunksOf(offset, length);
    if (chunks.length === 1) return this.preserveChunk(chunks[0] as number);
    for (let i = 0; i < chunks.length; i += COPY_PARALLELISM) {
      const part = chunks.slice(i, i + COPY_PARALLELISM);
      // Neighbouring chunks get neighbouring slots (one pwritev for them, one read back).
      const placed = this.place(part);
      try {
        await allSettled(part.map((c) => this.preserveChunk(c, placed)));
      } finally {
        for (const slot of placed.values()) this.store?.release(slot); // not used after all
      }
    }
  }

  /**
   * Slots for the chunks of `chunks` that need a copy and are not being copied, taken as one
   * run (store.allocateRun): the same test `preserveChunk` makes, in the same turn, so each of
   * them takes its slot from here. Chunks left without one allocate their own (or find it full).
   */
  private place(chunks: number[]): Map<number, number> {
    const placed = new Map<number, number>();
    const store = this.store;
    if (store === undefined || store.failure !== undefined) return placed;
    const { guard, table } = this.state;
    const need = chunks.filter((c) => guard.inProgress(c) === undefined && table.needsCopy(c, this.state.live));
    if (need.length < 2) return placed;
    const slots = store.allocateRun(need.length);
    for (let i = 0; i < slots.length; i++) placed.set(need[i] as number, slots[i] as number);
    return placed;
  }

  private async preserveChunk(chunk: number, placed?: Map<number, number>): Promise<void> {
    const { guard, table } = this.state;
    for (;;) {
      const copying = guard.inProgress(chunk);
      if (copying !== undefined) {
        await copying;
        continue;
      }
      if (!table.needsCopy(chunk, this.state.live)) return;
      const done = guard.claim(chunk);
      const slot = placed?.get(chunk);
      placed?.delete(chunk);
      try {
        await this.copy(chunk, slot);
      } finally {
        done();
      }
      return;
    }
  }

  private async copy(chunk: number, placedSlot: number | undefined): Promise<void> {
    const { table, guard } = this.state;
    const live = this.state.live;
    const latest = table.latest(chunk);
    const needing = live.filter((s) => s.seq > latest && !s.privateChunks.has(chunk));
    const seq = (live[live.length - 1] as Snapshot).seq;
    const store = this.store;
    if (store?.failure !== undefined) {
      if (placedSlot !== undefined) store.release(placedSlot);
      throw new NbdsnapError('EIO', `difference store failed: ${store.failure}; the chunk cannot be preserved`);
    }
    const slot = placedSlot ?? store?.allocate();
    if (store === undefined || slot === undefined) {
      await this.hooks.invalidate(needing, 'difference store full');
      await guard.readersDone(chunk);
      return;
    }
    const started = performance.now();
    let sum: ReturnType<typeof copyChecksum> | undefined;
    let data: Buffer;
    try {
      data = await this.next.read(chunk * this.state.chunkSize, this.state.chunkLength(chunk));
      // Of what was read, before it is written: the copy is checked against it. With it, the
      // checksum of each 4 KiB block, kept for the snapshot reads of parts of the chunk (copy-read.ts).
      sum = copyChecksum(store, slot, data);
    } catch (err) {
      return this.lose(needing, slot, chunk, err, sum);
    }
    // The copy and its EXCEPTION go out together: written, then recorded, then one sync.
    const record: JournalRecord = { type: 'EXCEPTION', device: this.state.id, seq, chunk, slot, crc: sum.crc };
    try {
      await this.hooks.record([record], [{ slot, data }]);
    } catch (err) {
      if (isCopyWriteFailure(err)) return this.lose(needing, slot, chunk, err, sum);
      sum.drop();
      throw err; // fail-stop: the slot is kept (its record may have reached the disk)
    } finally {
      pool.give(data); // written (or not): nothing refers to it any more
    }
    sum.keep();
    probes.cowCopied?.(this.state.name, this.state.chunkLength(chunk), started);
    await guard.readersDone(chunk);
  }

  /** The copy could not be made: its slot freed, the snapshots needing it invalidated (durably). */
  private async lose(
    needing: Snapshot[],
    slot: number,
    chunk: number,
    err: unknown,
    sum: { drop(): void } | undefined,
  ): Promise<void> {
    sum?.drop();
    this.store?.release(slot);
    await this.hooks.invalidate(needing, `copy-before-write failed: ${errorMessage(err)}`);
    await this.state.guard.readersDone(chunk);
  }
}

/** Like Promise.all, but settles only once every promise has: then rejects with the first error. */
async function allSettled(promises: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
