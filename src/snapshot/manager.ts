/**
 * The snapshot manager: owns the devices, the difference store and every snapshot, and keeps
 * the export registry in step (origin `DEVICE`, snapshots `DEVICE@SNAP`). Every control command
 * about snapshots and the store lands here.
 *
 * Taking a snapshot (one device or a consistency group): hold new writes on every member,
 * drain the writes in flight, flush the origins (so what the snapshot shows is on disk), record
 * the snapshot durably, release. Constant time whatever the device size.
 */
import { statSync } from 'node:fs';
import type { BlockDevice } from '../block/device.ts';
import { CbtControl } from '../cbt/cbt-control.ts';
import { NbdsnapError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { ExportRegistry } from '../server/exports.ts';
import type { StoreRange } from '../store/space.ts';
import { DiffStore } from '../store/store.ts';
import { CowOrigin } from './cow-origin.ts';
import { DamageLog, type ScrubProgress } from './damage.ts';
import { EventBus, LowSpaceWatch } from './events.ts';
import type { Copy } from './exception-table.ts';
import { MergeLayer } from './merge.ts';
import { MergeControl } from './merge-control.ts';
import { OriginState, type Snapshot } from './model.ts';
import { replay, usedSlots } from './replay.ts';
import { SnapshotDevice } from './snapshot-device.ts';
import { exportName, snapshotExport } from './snapshot-export.ts';
import { deviceInfo, snapshotInfo, storeInfo } from './status.ts';

export interface ManagerOptions {
  /** `path`: the image file, so a store range appended at run time can be refused on it. */
  devices: { name: string; device: BlockDevice; description: string; path?: string | undefined }[];
  store: StoreRange[];
  chunkSize?: number | undefined;
  transient: boolean;
  lowSpacePercent: number;
  readOnlyOrigins: boolean;
  /** Change-tracking block size; 0 turns tracking off. */
  cbtBlockSize: number;
}

const SNAPSHOT_NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export class SnapshotManager {
  readonly events: EventBus;
  readonly origins = new Map<string, { state: OriginState; cow: CowOrigin; merge: MergeLayer }>();
  readonly merges: MergeControl;
  readonly cbt: CbtControl;
  readonly damage: DamageLog;
  /** Devices the store knows but that are not served now: their snapshots keep their space. */
  private readonly unserved: OriginState[] = [];
  store: DiffStore | undefined;
  private readonly registry: ExportRegistry;
  private readonly log: Logger;
  private readonly opts: ManagerOptions;
  private readonly snapshots = new Map<number, Snapshot>();
  private nextSnapshotId = 1;
  private nextSeq = 1;
  private readonly lowSpace: LowSpaceWatch;
  /** Invalidations on their way to the journal: later writes needing the snapshot wait for them. */
  private readonly invalidating = new Map<Snapshot, Promise<void>>();
  private busy: Promise<unknown> = Promise.resolve();

  constructor(registry: ExportRegistry, log: Logger, opts: ManagerOptions) {
    this.registry = registry;
    this.log = log;
    this.opts = opts;
    this.events = new EventBus(log);
    this.lowSpace = new LowSpaceWatch(this.events, opts.lowSpacePercent);
    this.damage = new DamageLog(() => this.store, this.events, log);
    this.cbt = new CbtControl({
      commit: opts.store.length > 0 && !opts.transient ? (records) => this.requireStore().commit(records) : undefined,
      era: () => this.nextSeq,
    });
    this.merges = new MergeControl({
      store: () => this.requireStore(),
      events: this.events,
      layers: (device) => this.origin(device),
      hide: (snap) => this.registry.remove(exportName(snap)),
      quiesce: async (snap) => {
        const device = this.registry.get(exportName(snap))?.device;
        if (device instanceof SnapshotDevice) await device.quiesce();
      },
      damaged: (snap, chunk, copy) => this.damage.record(snap.origin, chunk, copy),
      release: (snap) =>
        this.exclusive(async () => {
          await this.requireStore().commit([{ type: 'DELETE', snapshot: snap.id }]);
          this.drop(snap, true);
        }),
    });
  }

  /** Open the store, replay it, and register every origin and snapshot export. */
  async start(): Promise<void> {
    const chunkSize = this.opts.chunkSize ?? 64 * 1024;
    let replayed = replay([], chunkSize);
    if (this.opts.store.length > 0) {
      const { store, records } = await DiffStore.open(this.opts.store, {
        chunkSize: this.opts.chunkSize,
        transient: this.opts.transient,
      });
      this.store = store;
      replayed = replay(records, store.chunkSize);
      if (store.failedBefore !== undefined) await this.invalidateAfterFailure(store, replayed.snapshots.values());
      for (const slot of usedSlots(replayed)) store.claim(slot);
    }
    const cs = this.store?.chunkSize ?? chunkSize;
    this.nextSnapshotId = replayed.nextSnapshotId;
    this.nextSeq = replayed.nextSeq;
    const known = [...replayed.origins.values()];
    for (const d of this.opts.devices) {
      let state = known.find((o) => o.name === d.name);
      if (state !== undefined && state.size !== d.device.size) {
        throw new NbdsnapError(
          'BAD_CONFIG',
          `device ${d.name} is ${d.device.size} bytes, but its snapshots were taken at ${state.size} bytes`,
        );
      }
      if (state === undefined) {
        const id = Math.max(0, ...known.map((o) => o.id), ...[...this.origins.values()].map((o) => o.state.id)) + 1;
        state = new OriginState(id, d.name, d.device.size, cs);
        await this.store?.commit([{ type: 'DEVICE', device: id, size: d.device.size, name: d.name }]);
      }
      const name = d.name;
      const cow = new CowOrigin(d.device, state, () => this.store, {
        invalidate: (snaps, reason) => this.invalidate(snaps, reason, true),
        afterCopy: () => this.checkSpace(),
        track: (offset, length) => this.cbt.track(name, offset, length),
      });
      if (this.opts.cbtBlockSize > 0) {
        await this.cbt.add(
          d.name,
          state.id,
          d.device.size,
          this.opts.cbtBlockSize,
          replayed.trackers.get(state.id),
          replayed.bookmarks.get(state.id),
        );
      }
      const merge = new MergeLayer(cow);
      this.origins.set(d.name, { state, cow, merge });
      this.registry.add({
        name: d.name,
        description: d.description,
        device: merge,
        readOnly: this.opts.readOnlyOrigins,
      });
    }
    for (const snap of replayed.snapshots.values()) {
      this.snapshots.set(snap.id, snap);
      if (this.origins.get(snap.origin.name)?.state !== snap.origin) {
        this.log.warn('snapshot of a device not served now', { snapshot: exportName(snap) });
      } else if (snap.state !== 'merging') this.expose(snap);
    }
    const served = [...this.snapshots.values()].filter((s) => this.origins.get(s.origin.name)?.state === s.origin);
    await this.merges.resume(served, (s) => {
      const m = replayed.merges.get(s.id);
      return m?.chunks === undefined ? undefined : { merged: m.merged, chunks: m.chunks };
    });
    for (const o of replayed.origins.values()) if (!this.origins.has(o.name)) this.unserved.push(o);
    this.checkSpace();
  }

  /**
   * A commit failed before this start: the journal ends at its last whole batch, so copies made
   * after it may be missing and no snapshot of that time can be proven exact. Record every valid
   * one invalid, then clear the failure flag: the store itself is consistent again.
   */
  private async invalidateAfterFailure(store: DiffStore, snaps: Iterable<Snapshot>): Promise<void> {
    const reason = `difference store failed: ${store.failedBefore}`;
    this.log.error('the difference store failed earlier; its snapshots are invalid', { reason });
    // Not a snapshot being merged: it takes no copies since its MERGE record (which is durable),
    // so it is exact, and the half-merged origin can only be made whole by finishing its merge.
    const all = [...snaps].filter((s) => s.state === 'valid');
    await store.commit(all.map((s) => ({ type: 'INVALID' as const, snapshot: s.id, reason })));
    for (const s of all) {
      s.state = 'invalid';
      s.reason = reason;
      s.mergeScheduled = false;
      this.drop(s, false);
    }
    await store.clearFailedBefore();
  }

  /** Serialise control operations that change snapshots (they hold writes and commit records). */
  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.busy.then(work, work);
    this.busy = run.catch(() => undefined);
    return run;
  }

  origin(name: string): { state: OriginState; cow: CowOrigin; merge: MergeLayer } {
    const o = this.origins.get(name);
    if (o === undefined) throw new NbdsnapError('NOT_FOUND', `no device "${name}"`);
    return o;
  }

  find(device: string, name: string): Snapshot {
    const o = this.origin(device);
    const snap = o.state.snapshots.find((s) => s.name === name);
    if (snap === undefined) throw new NbdsnapError('NOT_FOUND', `no snapshot ${device}@${name}`);
    return snap;
  }

  createSnapshot(devices: string[], name: string, writable: boolean): Promise<Snapshot[]> {
    return this.exclusive(async () => {
      if (!SNAPSHOT_NAME.test(name))
        throw new NbdsnapError(
          'BAD_ARGUMENT',
          `snapshot name "${name}" must be 1-128 of A-Z a-z 0-9 . _ : - (not starting with a symbol)`,
        );
      const store = this.store;
      if (store === undefined)
        throw new NbdsnapError('BAD_CONFIG', 'no difference store: start serve with --store PATH');
      if (new Set(devices).size !== devices.length) throw new NbdsnapError('BAD_ARGUMENT', 'a device is named twice');
      const members = devices.map((d) => this.origin(d));
      for (const m of members) {
        if (m.state.snapshots.some((s) => s.name === name))
          throw new NbdsnapError('EXISTS', `snapshot ${m.state.name}@${name} already exists`);
        if (m.state.snapshots.some((s) => s.state === 'merging'))
          throw new NbdsnapError('BUSY', `device ${m.state.name} is merging`);
      }
      const held: CowOrigin[] = [];
      try {
        for (const m of members) {
          await m.cow.hold();
          held.push(m.cow);
        }
        await Promise.all(members.map((m) => m.cow.base.flush()));
        const created = Date.now();
        const snaps: Snapshot[] = members.map((m) => ({
          id: this.nextSnapshotId++,
          name,
          origin: m.state,
          seq: this.nextSeq++,
          writable,
          created,
          state: 'valid',
          privateChunks: new Map(),
        }));
        await store.commit([
          {
            type: 'SNAPSHOT',
            created,
            name,
            members: snaps.map((s) => ({ snapshot: s.id, device: s.origin.id, seq: s.seq, writable })),
          },
        ]);
        for (const s of snaps) {
          s.origin.snapshots.push(s);
          s.origin.refresh();
          this.snapshots.set(s.id, s);
          this.cbt.bookmark(s.origin.name, s.name, s.seq);
        }
        for (const s of snaps) this.expose(s);
        this.events.emit({ type: 'snapshot-created', snapshots: snaps.map(exportName) });
        return snaps;
      } finally {
        for (const c of held) c.release();
      }
    });
  }

  deleteSnapshot(device: string, name: string): Promise<void> {
    return this.exclusive(async () => {
      const snap = this.find(device, name);
      if (snap.state === 'merging') throw new NbdsnapError('BUSY', `snapshot ${device}@${name} is merging`);
      await this.requireStore().commit([{ type: 'DELETE', snapshot: snap.id }]);
      this.registry.remove(exportName(snap));
      // Connections still open to it answer EIO from now on: its slots are about to be reused.
      snap.state = 'invalid';
      snap.reason = 'deleted';
      this.drop(snap, true);
      this.events.emit({ type: 'snapshot-deleted', snapshot: exportName(snap) });
    });
  }

  /** Free a snapshot's space; remove it entirely (delete) or keep it listed as invalid. */
  private drop(snap: Snapshot, remove: boolean): void {
    const store = this.requireStore();
    for (const own of snap.privateChunks.values()) store.release(own.slot);
    snap.privateChunks.clear();
    if (remove) {
      snap.origin.snapshots.splice(snap.origin.snapshots.indexOf(snap), 1);
      this.snapshots.delete(snap.id);
    }
    snap.origin.refresh();
    snap.origin.table.prune(snap.origin.readers, (slot) => store.release(slot));
    this.checkSpace();
  }

  /**
   * Overflow or copy failure: record the snapshots invalid, durably, then free their space.
   * Until the record is durable they stay valid and live, so every origin write that would need
   * a copy for them comes here and waits for the same record: an uncopied write must not reach
   * the origin before then (a crash would bring the snapshot back valid over overwritten data).
   */
  async invalidate(snaps: Snapshot[], reason: string, overflow: boolean): Promise<void> {
    const waits: Promise<void>[] = [];
    const fresh: Snapshot[] = [];
    for (const s of snaps) {
      if (s.state !== 'valid') continue;
      const pending = this.invalidating.get(s);
      if (pending !== undefined) waits.push(pending);
      else fresh.push(s);
    }
    if (fresh.length > 0) {
      const recorded = this.recordInvalid(fresh, reason, overflow);
      for (const s of fresh) this.invalidating.set(s, recorded);
      waits.push(recorded);
    }
    await Promise.all(waits);
  }

  private async recordInvalid(snaps: Snapshot[], reason: string, overflow: boolean): Promise<void> {
    try {
      await this.requireStore().commit(snaps.map((s) => ({ type: 'INVALID' as const, snapshot: s.id, reason })));
    } catch (err) {
      this.log.error('could not record invalidation; the store is failing', { err: String(err) });
    }
    for (const s of snaps) {
      this.invalidating.delete(s);
      s.state = 'invalid';
      s.reason = reason;
      s.mergeScheduled = false; // an invalid snapshot is never merged (replay does the same)
    }
    for (const o of new Set(snaps.map((s) => s.origin))) o.refresh();
    // One deleted meanwhile is gone already: nothing to report or free.
    const valid = snaps.filter((s) => this.snapshots.get(s.id) === s);
    if (valid.length === 0) return;
    if (overflow)
      this.events.emit({ type: 'overflow', device: valid[0]?.origin.name ?? '', snapshots: valid.map(exportName) });
    for (const s of valid) {
      this.events.emit({ type: 'invalidated', snapshot: exportName(s), reason });
      this.drop(s, false);
    }
  }

  /** `merge DEVICE@SNAP`: roll the origin back to the snapshot (now or at the next start). */
  startMerge(device: string, name: string, onNextStart: boolean) {
    return this.exclusive(async () => {
      const job = await this.merges.start(this.find(device, name), onNextStart);
      return job?.progress() ?? { snapshot: `${device}@${name}`, state: 'scheduled for next start' };
    });
  }

  /** `cbt mark-dirty`: record a range as changed now, as a write would. */
  markDirty(device: string, offset: number, length: number): Promise<void> {
    return this.cbt.markDirty(device, this.origin(device).state.size, offset, length);
  }

  mergeStatus() {
    return [...this.merges.status(), ...this.merges.scheduled(this.snapshots.values())];
  }

  appendStore(range: StoreRange): Promise<void> {
    return this.exclusive(async () => {
      const store = this.requireStore();
      // The origin's own writes would overwrite the copies (serve refuses this at start too).
      const target = statSync(range.path);
      for (const d of this.opts.devices) {
        const o = d.path === undefined ? undefined : statSync(d.path);
        if (o !== undefined && o.dev === target.dev && o.ino === target.ino)
          throw new NbdsnapError('BAD_ARGUMENT', `store range on ${range.path} overlaps the origin device ${d.path}`);
      }
      await store.append(range);
      this.events.emit({
        type: 'store-appended',
        range: `${range.path}:${range.start / 512}+${range.length / 512}`,
        totalBytes: store.totalSlots * store.chunkSize,
      });
      this.checkSpace();
    });
  }

  requireStore(): DiffStore {
    if (this.store === undefined)
      throw new NbdsnapError('BAD_CONFIG', 'no difference store: start serve with --store PATH');
    return this.store;
  }

  private expose(snap: Snapshot): void {
    const base = this.origins.get(snap.origin.name)?.cow.base as BlockDevice;
    const damaged = (chunk: number, copy: Copy) => this.damage.record(snap.origin, chunk, copy);
    this.registry.add(snapshotExport(snap, base, this.requireStore(), this.cbt, damaged));
  }

  private checkSpace(): void {
    if (this.store !== undefined) this.lowSpace.check(this.store);
  }

  list() {
    return [...this.snapshots.values()].sort((a, b) => a.seq - b.seq).map((s) => snapshotInfo(s, this.store));
  }

  /** `store scrub`: read every live copy in the store and record the damaged ones. */
  scrub(onProgress: (p: ScrubProgress) => void) {
    this.requireStore();
    return this.damage.scrub([...[...this.origins.values()].map((o) => o.state), ...this.unserved], onProgress);
  }

  storeStatus() {
    return storeInfo(this.requireStore(), [...[...this.origins.values()].map((o) => o.state), ...this.unserved]);
  }

  status() {
    return {
      devices: [...this.origins.values()].map(({ state }) => deviceInfo(state)),
      snapshots: this.list(),
      merges: this.mergeStatus(),
      store: this.store === undefined ? null : this.storeStatus(),
    };
  }

  /**
   * Before a graceful stop: a transient store forgets every snapshot at exit, so a merge still
   * running would leave the origin half rolled back for good; let it finish (a durable store
   * resumes it at the next start instead).
   */
  async beforeStop(): Promise<void> {
    if (this.store?.transient === true) await this.merges.settle();
  }

  close(): void {
    this.store?.close();
  }
}
