/**
 * Change-block tracking for every served device: the write hook that makes each (block, era)
 * durable before the write goes on, and the answers: changed ranges between two snapshot points,
 * and the `qemu:dirty-bitmap:FROM` contexts that a snapshot export offers. The trackers and the
 * snapshot points (kept after a snapshot is deleted, like ZFS bookmarks, so `--since` still
 * works) are part of the snapshot catalog, changed only by the records this module hands to its
 * `RecordSink` (the snapshot code's commit-then-apply path), so a restart finds what ran.
 */
import { randomUUID } from 'node:crypto';
import { NbdsnapError } from '../errors.ts';
import { type Extent, QEMU_DIRTY_BITMAP_PREFIX } from '../nbd-protocol/index.ts';
import type { MetaContextSource } from '../server/exports.ts';
import type { JournalRecord } from '../store/records.ts';
import type { CbtTracker } from './tracker.ts';

/**
 * The tracking state, part of the snapshot catalog: only the records given to `RecordSink`
 * change it (CBT_GEN starts a tracker, CBT marks blocks, SNAPSHOT adds a point, FORGET removes
 * a deleted snapshot's point and the eras only it needed).
 */
export interface CbtState {
  /** Trackers by device id. */
  readonly trackers: Map<number, CbtTracker>;
  /** Snapshot points of the current generation by device id: name -> seq. */
  readonly bookmarks: Map<number, Map<string, number>>;
  /** The era of a write made now: the sequence number the next snapshot will get. */
  readonly nextSeq: number;
}

/** Records change-tracking records: durably (if the store keeps them), then into `CbtState`. */
export interface RecordSink {
  record(records: JournalRecord[]): Promise<unknown>;
}

/** A tracked device. */
interface Tracked {
  id: number;
  size: number;
}

const NO_MARKS: ReadonlyMap<string, number> = new Map();
const DONE: Promise<void> = Promise.resolve();
const nothing = (): void => {};

export interface ChangedRanges {
  device: string;
  from: string;
  to: string;
  generation: string;
  blockSize: number;
  ranges: { offset: number; length: number }[];
  changedBytes: number;
  deviceBytes: number;
}

export class CbtControl {
  private readonly state: CbtState;
  private readonly sink: RecordSink;
  /** Whether tracking survives a restart (a persistent store); if not, each start is a new generation. */
  private readonly persistent: boolean;
  private readonly devices = new Map<string, Tracked>();

  constructor(state: CbtState, sink: RecordSink, persistent: boolean) {
    this.state = state;
    this.sink = sink;
    this.persistent = persistent;
  }

  /** Start tracking a device, continuing its recorded history when it has the same block size. */
  async add(name: string, id: number, size: number, blockSize: number): Promise<void> {
    const kept = this.state.trackers.get(id);
    if (kept === undefined || kept.blockSize !== blockSize || !this.persistent) {
      // A new generation: no history, so no earlier snapshot can be a base any more.
      await this.sink.record([{ type: 'CBT_GEN', device: id, blockSize, generation: randomUUID() }]);
    }
    this.devices.set(name, { id, size });
  }

  has(device: string): boolean {
    return this.devices.has(device);
  }

  private tracker(d: Tracked): CbtTracker {
    const t = this.state.trackers.get(d.id);
    if (t === undefined) throw new NbdsnapError('NOT_FOUND', `device ${d.id} has no change tracker`);
    return t;
  }

  private marks(d: Tracked): ReadonlyMap<string, number> {
    return this.state.bookmarks.get(d.id) ?? NO_MARKS;
  }

  /** Before a write to [offset, offset+length) proceeds: record its blocks in `eras` (default: now). */
  track(device: string, offset: number, length: number, eras?: number[]): Promise<void> {
    // Not an async function: most writes hit blocks already recorded, and an async frame per
    // write was a large part of a 4 KiB write's garbage (measured).
    const d = this.devices.get(device);
    if (d === undefined) return DONE;
    const records: JournalRecord[] = [];
    try {
      const tracker = this.tracker(d);
      for (const era of eras ?? [this.state.nextSeq]) {
        for (const [block, count] of tracker.needs(offset, length, era)) {
          records.push({ type: 'CBT', device: d.id, era, block, count });
        }
      }
    } catch (err) {
      return Promise.reject(err);
    }
    return records.length > 0 ? this.sink.record(records).then(nothing) : DONE;
  }

  /** `cbt mark-dirty`: record [offset, offset+length) of a device as changed now. */
  async markDirty(device: string, size: number, offset: number, length: number): Promise<void> {
    const inside = Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length > 0;
    if (!inside || offset + length > size) {
      throw new NbdsnapError('BAD_ARGUMENT', `range [${offset}, +${length}) is not inside ${device} (${size} bytes)`);
    }
    if (!this.devices.has(device)) throw new NbdsnapError('BAD_CONFIG', 'change tracking is off (--cbt-block-size 0)');
    await this.track(device, offset, length);
  }

  private point(d: Tracked, device: string, name: string): number {
    const seq = this.marks(d).get(name);
    if (seq === undefined)
      throw new NbdsnapError(
        'NOT_FOUND',
        `no change-tracking point ${device}@${name} in generation ${this.tracker(d).generation} (no such snapshot, a deleted one whose point was forgotten (--cbt-keep-deleted, cbt forget), or one taken before tracking was reset): take a full backup`,
      );
    return seq;
  }

  /** Changed ranges between snapshot `from` and snapshot `to` (or the origin now). */
  changed(device: string, from: string, to?: string): ChangedRanges {
    const d = this.devices.get(device);
    if (d === undefined) throw new NbdsnapError('NOT_FOUND', `device ${device} is not tracked`);
    const a = this.point(d, device, from);
    const b = to === undefined ? Number.POSITIVE_INFINITY : this.point(d, device, to);
    if (b <= a) throw new NbdsnapError('BAD_ARGUMENT', `${device}@${to} is not later than ${device}@${from}`);
    const { size } = d;
    const tracker = this.tracker(d);
    const bs = tracker.blockSize;
    const ranges = [...tracker.changed(a, b).runs()].map(([first, count]) => {
      const offset = first * bs;
      return { offset, length: Math.min(count * bs, size - offset) };
    });
    return {
      device,
      from,
      to: to ?? '(origin now)',
      generation: tracker.generation,
      blockSize: bs,
      ranges,
      changedBytes: ranges.reduce((n, r) => n + r.length, 0),
      deviceBytes: size,
    };
  }

  generation(device: string): { generation: string; blockSize: number } | undefined {
    const d = this.devices.get(device);
    if (d === undefined) return undefined;
    const tracker = this.tracker(d);
    return { generation: tracker.generation, blockSize: tracker.blockSize };
  }

  /**
   * `qemu:dirty-bitmap:FROM` for every earlier snapshot point FROM of the device, on export TO.
   * A connection keeps the contexts it negotiated: once FROM is forgotten (its eras dropped or
   * merged), its block status answers EIO rather than a bitmap the eras no longer hold. Each
   * comes with the fact `x-nbdsnap:bitmap-point=FROM@SEQ` (empty block status), the point it
   * counts from: a name forgotten and taken again by a new snapshot has another point, which a
   * backup made at the old one can tell.
   */
  dirtyContexts(device: string, toSeq: number): MetaContextSource[] {
    const d = this.devices.get(device);
    if (d === undefined) return [];
    return [...this.marks(d)]
      .filter(([, seq]) => seq < toSeq)
      .flatMap(([name, seq]) => [
        {
          name: `${QEMU_DIRTY_BITMAP_PREFIX}${name}`,
          extents: async (offset: number, length: number) => {
            if (this.marks(d).get(name) !== seq)
              throw new NbdsnapError(
                'EIO',
                `change-tracking point ${device}@${name} was forgotten: take a full backup`,
              );
            return dirtyExtents(this.tracker(d), seq, toSeq, d.size, offset, length);
          },
        },
        {
          name: `x-nbdsnap:bitmap-point=${name}@${seq}`,
          extents: async (_o: number, length: number) => [{ length, flags: 0 }],
        },
      ]);
  }
}

/**
 * Extents from `offset`: flag 1 (dirty) where a block changed in (from, to], else 0 (clean).
 * Only the eras' runs inside the requested blocks are visited: the cost follows the changed
 * runs there, not the length of the range.
 */
function dirtyExtents(t: CbtTracker, from: number, to: number, size: number, offset: number, length: number): Extent[] {
  const end = Math.min(size, offset + length);
  if (end <= offset) return [];
  const bs = t.blockSize;
  const first = Math.floor(offset / bs);
  const runs = t.changed(from, to, first, Math.floor((end - 1) / bs) + 1 - first);
  const out: Extent[] = [];
  let pos = offset;
  for (let i = 0; i < runs.length; i++) {
    const start = Math.max(offset, runs.start(i) * bs);
    const stop = Math.min(end, runs.end(i) * bs);
    if (start > pos) out.push({ length: start - pos, flags: 0 });
    out.push({ length: stop - start, flags: 1 });
    pos = stop;
  }
  if (pos < end) out.push({ length: end - pos, flags: 0 });
  return out;
}
