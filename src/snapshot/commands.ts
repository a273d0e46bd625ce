/**
 * The control commands that change snapshots and the store, run one at a time (`Serial`): take
 * a snapshot (one device or a consistency group), delete one (with the FORGET records of the
 * change-tracking points now beyond `--cbt-keep-deleted`, in the same batch), forget a point,
 * start or schedule a merge, append a store range. Each builds its records and hands them to the
 * recorder (commit, apply, act on the effects); none changes the catalog itself.
 *
 * Taking a snapshot: hold new writes on every member, drain the writes in flight, flush the
 * origins (so what the snapshot shows is on disk), record the snapshot durably, release.
 * Constant time whatever the device size.
 */
import { type OriginUse, refuseAliases } from '../block/ownership.ts';
import { type PointInfo, pointList } from '../cbt/keep.ts';
import { NbdsnapError } from '../errors.ts';
import type { StoreRange } from '../store/space.ts';
import type { DiffStore } from '../store/store.ts';
import type { Catalog } from './catalog.ts';
import type { CowOrigin } from './cow-origin.ts';
import type { DeviceStack } from './device-stack.ts';
import type { EventBus, LowSpaceWatch } from './events.ts';
import type { MergeControl } from './merge-control.ts';
import type { Snapshot } from './model.ts';
import { exportName } from './model.ts';
import type { Recorder } from './recorder.ts';
import { releaseRecords } from './release.ts';
import type { Serial } from './serial.ts';

export interface CommandParts {
  catalog: Catalog;
  recorder: Recorder;
  store: DiffStore | undefined;
  stacks: ReadonlyMap<string, DeviceStack>;
  merges: MergeControl;
  events: EventBus;
  lowSpace: LowSpaceWatch;
  serial: Serial;
  /** The served devices' images: a store range appended on the same storage is refused. */
  origins: OriginUse[];
  /** Points of deleted snapshots kept per device for `--since` (`--cbt-keep-deleted`). */
  keepDeleted: number;
}

const SNAPSHOT_NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export function requireStore(store: DiffStore | undefined): DiffStore {
  if (store === undefined) throw new NbdsnapError('BAD_CONFIG', 'no difference store: start serve with --store PATH');
  return store;
}

export class Commands {
  private readonly parts: CommandParts;

  constructor(parts: CommandParts) {
    this.parts = parts;
  }

  stack(name: string): DeviceStack {
    const stack = this.parts.stacks.get(name);
    if (stack === undefined) throw new NbdsnapError('NOT_FOUND', `no device "${name}"`);
    return stack;
  }

  find(device: string, name: string): Snapshot {
    const snap = this.stack(device).state.snapshots.find((s) => s.name === name);
    if (snap === undefined) throw new NbdsnapError('NOT_FOUND', `no snapshot ${device}@${name}`);
    return snap;
  }

  createSnapshot(devices: string[], name: string, writable: boolean): Promise<Snapshot[]> {
    return this.parts.serial.run(async () => {
      if (!SNAPSHOT_NAME.test(name))
        throw new NbdsnapError(
          'BAD_ARGUMENT',
          `snapshot name "${name}" must be 1-128 of A-Z a-z 0-9 . _ : - (not starting with a symbol)`,
        );
      requireStore(this.parts.store);
      if (new Set(devices).size !== devices.length) throw new NbdsnapError('BAD_ARGUMENT', 'a device is named twice');
      const members = devices.map((d) => this.stack(d));
      for (const m of members) {
        if (m.state.snapshots.some((s) => s.name === name))
          throw new NbdsnapError('EXISTS', `snapshot ${m.name}@${name} already exists`);
        // A kept change-tracking point of a deleted snapshot: the same name for a new point would
        // make `backup --since` a backup taken at the old one quietly miss what changed between.
        if (this.parts.catalog.trackers.has(m.state.id) && this.parts.catalog.bookmarks.get(m.state.id)?.has(name))
          throw new NbdsnapError(
            'EXISTS',
            `${m.name}@${name} is still the change-tracking point of a deleted snapshot (kept for backup --since): forget it first (nbdsnap cbt forget ${m.name} ${name}) or choose another name`,
          );
        if (m.state.snapshots.some((s) => s.state === 'merging'))
          throw new NbdsnapError('BUSY', `device ${m.name} is merging`);
      }
      const held: CowOrigin[] = [];
      try {
        for (const m of members) {
          await m.cow.hold();
          held.push(m.cow);
        }
        await Promise.all(members.map((m) => m.base.flush()));
        const { catalog } = this.parts;
        const created = Date.now();
        const snapshot = catalog.nextSnapshotId;
        const seq = catalog.nextSeq;
        const fx = await this.parts.recorder.record([
          {
            type: 'SNAPSHOT',
            created,
            name,
            members: members.map((m, i) => ({ snapshot: snapshot + i, device: m.state.id, seq: seq + i, writable })),
          },
        ]);
        this.parts.events.emit({ type: 'snapshot-created', snapshots: fx.created.map(exportName) });
        return fx.created;
      } finally {
        for (const c of held) c.release();
      }
    });
  }

  deleteSnapshot(device: string, name: string): Promise<void> {
    return this.parts.serial.run(async () => {
      const snap = this.find(device, name);
      if (snap.state === 'merging') throw new NbdsnapError('BUSY', `snapshot ${device}@${name} is merging`);
      requireStore(this.parts.store);
      // The points now beyond --cbt-keep-deleted are forgotten in the same batch.
      const records = releaseRecords(this.parts.catalog, snap, this.parts.keepDeleted);
      await this.parts.recorder.record(records);
      this.parts.events.emit({ type: 'snapshot-deleted', snapshot: exportName(snap) });
    });
  }

  private liveNames(device: string): Set<string> {
    return new Set(this.stack(device).state.snapshots.map((s) => s.name));
  }

  /** The change-tracking points of a device, oldest first: its snapshots and the deleted ones kept. */
  points(device: string): PointInfo[] {
    const marks = this.parts.catalog.bookmarks.get(this.stack(device).state.id) ?? new Map<string, number>();
    return pointList(marks, this.liveNames(device));
  }

  /** `cbt forget DEVICE NAME`: forget the point of a deleted snapshot (`--since NAME` is refused after). */
  forgetPoint(device: string, name: string): Promise<void> {
    return this.parts.serial.run(async () => {
      const { id } = this.stack(device).state;
      if (this.liveNames(device).has(name))
        throw new NbdsnapError(
          'EXISTS',
          `${device}@${name} is a snapshot that exists: its point is kept while it does (delete the snapshot first)`,
        );
      if (this.parts.catalog.bookmarks.get(id)?.has(name) !== true)
        throw new NbdsnapError(
          'NOT_FOUND',
          `no change-tracking point ${device}@${name} (see nbdsnap cbt points ${device})`,
        );
      await this.parts.recorder.record([{ type: 'FORGET', device: id, name }]);
    });
  }

  /** `merge DEVICE@SNAP`: roll the origin back to the snapshot (now or at the next start). */
  startMerge(device: string, name: string, onNextStart: boolean, speed?: number) {
    return this.parts.serial.run(async () => {
      const job = await this.parts.merges.start(this.find(device, name), onNextStart, speed);
      return job?.progress() ?? { snapshot: `${device}@${name}`, state: 'scheduled for next start' };
    });
  }

  /** `merge speed DEVICE@SNAP SPEED`: the rate limit of a merge in progress. */
  async mergeSpeed(device: string, name: string, speed: number) {
    return this.parts.merges.setSpeed(this.find(device, name), speed).progress();
  }

  appendStore(range: StoreRange): Promise<void> {
    return this.parts.serial.run(async () => {
      const store = requireStore(this.parts.store);
      // The same storage as an origin or a range in use, under any name (serve checks at start).
      refuseAliases(this.parts.origins, [...store.space.rangeList, range]);
      await store.append(range);
      this.parts.events.emit({
        type: 'store-appended',
        range: `${range.path}:${range.start / 512}+${range.length / 512}`,
        totalBytes: store.totalSlots * store.chunkSize,
      });
      this.parts.lowSpace.check(store);
    });
  }
}
