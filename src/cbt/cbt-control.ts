/**
 * Change-block tracking for every served device: the trackers, the snapshot points they are
 * queried by (kept after a snapshot is deleted, like ZFS bookmarks, so `--since` still works),
 * the write hook that makes each (block, era) durable before the write goes on, and the
 * answers: changed ranges between two points, and the `qemu:dirty-bitmap:FROM` contexts that a
 * snapshot export offers.
 */
import { NbdsnapError } from '../errors.ts';
import { type Extent, QEMU_DIRTY_BITMAP_PREFIX } from '../nbd-protocol/index.ts';
import type { MetaContextSource } from '../server/exports.ts';
import type { JournalRecord } from '../store/records.ts';
import { CbtTracker } from './tracker.ts';

export interface CbtHost {
  /** Commit records durably (undefined: no persistent store, tracking is in memory only). */
  commit: ((records: JournalRecord[]) => Promise<void>) | undefined;
  /** The era of a write made now: the sequence number the next snapshot will get. */
  era(): number;
}

interface Tracked {
  id: number;
  tracker: CbtTracker;
  marks: Map<string, number>;
}

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
  private readonly host: CbtHost;
  private readonly devices = new Map<string, Tracked>();
  private readonly sizes = new Map<string, number>();

  constructor(host: CbtHost) {
    this.host = host;
  }

  /** Start tracking a device, continuing `replayed` history when it has the same block size. */
  async add(
    name: string,
    id: number,
    size: number,
    blockSize: number,
    replayed?: CbtTracker,
    marks?: Map<string, number>,
  ) {
    let tracker = replayed;
    let points = marks ?? new Map<string, number>();
    if (tracker === undefined || tracker.blockSize !== blockSize || this.host.commit === undefined) {
      // A new generation: no history, so no earlier snapshot can be a base any more.
      tracker = new CbtTracker(size, blockSize);
      points = new Map();
      await this.host.commit?.([{ type: 'CBT_GEN', device: id, blockSize, generation: tracker.generation }]);
    }
    this.devices.set(name, { id, tracker, marks: points });
    this.sizes.set(name, size);
  }

  has(device: string): boolean {
    return this.devices.has(device);
  }

  /** Record a snapshot point under its name. */
  bookmark(device: string, name: string, seq: number): void {
    this.devices.get(device)?.marks.set(name, seq);
  }

  /** Before a write to [offset, offset+length) proceeds: record its blocks in `eras` (default: now). */
  async track(device: string, offset: number, length: number, eras: number[] = [this.host.era()]): Promise<void> {
    const d = this.devices.get(device);
    if (d === undefined) return;
    const records: JournalRecord[] = [];
    const todo: [number, number, number][] = [];
    for (const era of eras) {
      for (const [block, count] of d.tracker.needs(offset, length, era)) {
        records.push({ type: 'CBT', device: d.id, era, block, count });
        todo.push([era, block, count]);
      }
    }
    if (todo.length === 0) return;
    if (this.host.commit !== undefined) await this.host.commit(records);
    for (const [era, block, count] of todo) d.tracker.mark(era, block, count);
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
    const seq = d.marks.get(name);
    if (seq === undefined)
      throw new NbdsnapError(
        'NOT_FOUND',
        `no snapshot ${device}@${name} in change-tracking generation ${d.tracker.generation} (unknown, or taken before tracking was reset): take a full backup`,
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
    const size = this.sizes.get(device) as number;
    const bs = d.tracker.blockSize;
    const ranges = [...d.tracker.changed(a, b).runs()].map(([first, count]) => {
      const offset = first * bs;
      return { offset, length: Math.min(count * bs, size - offset) };
    });
    return {
      device,
      from,
      to: to ?? '(origin now)',
      generation: d.tracker.generation,
      blockSize: bs,
      ranges,
      changedBytes: ranges.reduce((n, r) => n + r.length, 0),
      deviceBytes: size,
    };
  }

  generation(device: string): { generation: string; blockSize: number } | undefined {
    const d = this.devices.get(device);
    return d === undefined ? undefined : { generation: d.tracker.generation, blockSize: d.tracker.blockSize };
  }

  /** `qemu:dirty-bitmap:FROM` for every earlier snapshot point FROM of the device, on export TO. */
  dirtyContexts(device: string, toSeq: number): MetaContextSource[] {
    const d = this.devices.get(device);
    if (d === undefined) return [];
    const size = this.sizes.get(device) as number;
    return [...d.marks]
      .filter(([, seq]) => seq < toSeq)
      .map(([name, seq]) => ({
        name: `${QEMU_DIRTY_BITMAP_PREFIX}${name}`,
        extents: async (offset: number, length: number) => dirtyExtents(d.tracker, seq, toSeq, size, offset, length),
      }));
  }
}

/** Extents from `offset`: flag 1 (dirty) where a block changed in (from, to], else 0 (clean). */
function dirtyExtents(t: CbtTracker, from: number, to: number, size: number, offset: number, length: number): Extent[] {
  const bits = t.changed(from, to);
  const end = Math.min(size, offset + length);
  const out: Extent[] = [];
  for (let pos = offset; pos < end; ) {
    const block = Math.floor(pos / t.blockSize);
    const blockEnd = Math.min(end, (block + 1) * t.blockSize);
    const flags = bits.has(block) ? 1 : 0;
    const last = out[out.length - 1];
    if (last !== undefined && last.flags === flags) last.length += blockEnd - pos;
    else out.push({ length: blockEnd - pos, flags });
    pos = blockEnd;
  }
  return out;
}
