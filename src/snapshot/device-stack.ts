/**
 * The layer stack of one served device, bottom up: the device itself (file or memory), the
 * copy-on-write origin (cow-origin.ts), and the merge layer (merge.ts), which is what the origin
 * export serves. The stack is the COW layer's link to the rest of the server: its copies and
 * invalidations are recorded through the recorder (commit, then apply), its writes are tracked
 * for change tracking, and it builds the export of each snapshot of the device.
 *
 * Invalidation (store full, or a copy that failed): the snapshots that needed the chunk are
 * recorded invalid, durably, before the origin write goes on. Until that record is durable they
 * stay valid and live, so every other origin write that would need a copy for them comes here and
 * waits for the same record: an uncopied write must not reach the origin before then (a crash
 * would bring the snapshot back valid over overwritten data). If the record cannot be made
 * durable, every write waiting for it fails (EIO) and the snapshots stay valid.
 */
import type { BlockDevice } from '../block/device.ts';
import type { CbtControl } from '../cbt/cbt-control.ts';
import { NbdsnapError } from '../errors.ts';
import type { ExportEntry } from '../server/exports.ts';
import type { SlotData } from '../store/copy-writes.ts';
import type { JournalRecord } from '../store/records.ts';
import type { DiffStore } from '../store/store.ts';
import { type CowHooks, CowOrigin } from './cow-origin.ts';
import type { DamageLog } from './damage.ts';
import type { EventBus } from './events.ts';
import type { Copy } from './exception-table.ts';
import { MergeLayer } from './merge-layer.ts';
import type { OriginState, Snapshot } from './model.ts';
import { exportName } from './model.ts';
import type { Recorder } from './recorder.ts';
import { snapshotExport } from './snapshot-export.ts';

export interface StackParts {
  store: DiffStore | undefined;
  recorder: Recorder;
  cbt: CbtControl;
  events: EventBus;
  /** Records a copy a snapshot read found damaged (damage.ts). */
  damage: DamageLog;
}

export class DeviceStack implements CowHooks {
  readonly name: string;
  readonly state: OriginState;
  readonly cow: CowOrigin;
  /** The top of the stack: the origin export's device. */
  readonly merge: MergeLayer;
  private readonly parts: StackParts;
  /** Invalidations on their way to the journal: later writes needing the snapshot wait for them. */
  private readonly invalidating = new Map<Snapshot, Promise<void>>();

  constructor(name: string, device: BlockDevice, state: OriginState, parts: StackParts) {
    this.name = name;
    this.state = state;
    this.parts = parts;
    this.cow = new CowOrigin(device, state, parts.store, this);
    this.merge = new MergeLayer(this.cow);
  }

  /** The device below the COW layer. */
  get base(): BlockDevice {
    return this.cow.base;
  }

  /** The export of one of this device's snapshots, `DEVICE@SNAP`. */
  snapshotExport(snap: Snapshot): ExportEntry {
    const store = this.parts.store;
    if (store === undefined) throw new NbdsnapError('BAD_CONFIG', 'no difference store: start serve with --store PATH');
    const { cbt, recorder, damage } = this.parts;
    const damaged = (chunk: number, copy: Copy) => damage.record(snap.origin, chunk, copy);
    return snapshotExport(snap, this.base, store, cbt, recorder, damaged);
  }

  record(records: JournalRecord[], copies?: readonly SlotData[]): Promise<unknown> {
    return this.parts.recorder.record(records, copies);
  }

  track(offset: number, length: number): Promise<void> {
    return this.parts.cbt.track(this.name, offset, length);
  }

  async invalidate(snaps: readonly Snapshot[], reason: string): Promise<void> {
    const waits: Promise<void>[] = [];
    const fresh: Snapshot[] = [];
    for (const s of snaps) {
      if (s.state !== 'valid') continue;
      const pending = this.invalidating.get(s);
      if (pending !== undefined) waits.push(pending);
      else fresh.push(s);
    }
    if (fresh.length > 0) {
      const recorded = this.recordInvalid(fresh, reason);
      for (const s of fresh) this.invalidating.set(s, recorded);
      waits.push(recorded);
    }
    await Promise.all(waits);
  }

  private async recordInvalid(snaps: Snapshot[], reason: string): Promise<void> {
    // The store could not keep a copy these snapshots needed (an `invalidated` event follows
    // once the record is durable).
    this.parts.events.emit({ type: 'overflow', device: this.name, snapshots: snaps.map(exportName) });
    try {
      await this.parts.recorder.record(snaps.map((s) => ({ type: 'INVALID' as const, snapshot: s.id, reason })));
    } finally {
      for (const s of snaps) this.invalidating.delete(s);
    }
  }
}
