/**
 * The state the snapshot layers share: one `OriginState` per device (its exception table,
 * chunk guard and snapshots) and one `Snapshot` per point-in-time image. They are part of the
 * catalog (catalog.ts): only the catalog's transition (transition.ts) changes them; the layers
 * (cow-origin.ts, snapshot-device.ts, merge.ts) read them on every request. The chunk guard is
 * the exception: run-time coordination of copies and reads, never recorded.
 */
import { ChunkGuard } from './chunk-guard.ts';
import { type Copy, ExceptionTable, type SnapshotRef } from './exception-table.ts';

export type SnapshotState = 'valid' | 'invalid' | 'merging';

export interface Snapshot extends SnapshotRef {
  readonly id: number;
  readonly name: string;
  readonly origin: OriginState;
  readonly seq: number;
  readonly writable: boolean;
  readonly created: number;
  state: SnapshotState;
  /** Why it was invalidated (e.g. "difference store full"). */
  reason?: string;
  /** A merge is recorded to start at the next server start (`merge --on-next-start`). */
  mergeScheduled?: boolean;
  readonly privateChunks: Map<number, Copy>;
}

export class OriginState {
  readonly id: number;
  readonly name: string;
  readonly size: number;
  readonly chunkSize: number;
  readonly table = new ExceptionTable();
  readonly guard = new ChunkGuard();
  /** Every snapshot of this device, valid or not, oldest first. */
  readonly snapshots: Snapshot[] = [];
  private liveCache: Snapshot[] = [];
  private readersCache: Snapshot[] = [];

  constructor(id: number, name: string, size: number, chunkSize: number) {
    this.id = id;
    this.name = name;
    this.size = size;
    this.chunkSize = chunkSize;
  }

  /** Snapshots that still need copies of overwritten chunks, by ascending seq. */
  get live(): readonly Snapshot[] {
    return this.liveCache;
  }

  /** Snapshots whose store copies must be kept: the live ones and one being merged. */
  get readers(): readonly Snapshot[] {
    return this.readersCache;
  }

  /** Call after any snapshot is added, removed or changes state. */
  refresh(): void {
    const bySeq = [...this.snapshots].sort((a, b) => a.seq - b.seq);
    this.liveCache = bySeq.filter((s) => s.state === 'valid');
    this.readersCache = bySeq.filter((s) => s.state !== 'invalid');
  }

  get chunkCount(): number {
    return Math.ceil(this.size / this.chunkSize);
  }

  /** Bytes in `chunk` (the last chunk of a device may be short). */
  chunkLength(chunk: number): number {
    return Math.min(this.chunkSize, this.size - chunk * this.chunkSize);
  }

  /** Chunks touched by [offset, offset + length). */
  chunksOf(offset: number, length: number): number[] {
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.floor((offset + length - 1) / this.chunkSize);
    const out: number[] = [];
    for (let c = first; c <= last; c++) out.push(c);
    return out;
  }
}

/** A snapshot's export name: `DEVICE@SNAP`. */
export const exportName = (s: Snapshot): string => `${s.origin.name}@${s.name}`;
