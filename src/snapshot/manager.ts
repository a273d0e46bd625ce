/**
 * The snapshot manager: the facade the control server and the CLI use. `start()` opens the
 * store, replays its journal into the catalog, and sets up the parts, each with one job:
 *
 *   catalog.ts     the state the journal describes         transition.ts  apply(state, record)
 *   recorder.ts    commit, apply, act on the effects       device-stack.ts  each device's layers
 *   commands.ts    create / delete / merge / append        publisher.ts   the export registry
 *   merge-control.ts  merge jobs                           status.ts      views for the socket
 *
 * Everything else here only forwards to them.
 */
import type { BlockDevice } from '../block/device.ts';
import { CbtControl } from '../cbt/cbt-control.ts';
import { NbdsnapError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { probes } from '../metrics/probes.ts';
import type { ExportRegistry } from '../server/exports.ts';
import type { StoreRange } from '../store/space.ts';
import { DiffStore } from '../store/store.ts';
import type { Catalog } from './catalog.ts';
import { Checkpointer } from './checkpointer.ts';
import { Commands, requireStore } from './commands.ts';
import { closeCopyReader, copyReaderOf } from './copy-read.ts';
import { DamageLog, type ScrubProgress } from './damage.ts';
import { DeviceStack } from './device-stack.ts';
import { EventBus, LowSpaceWatch } from './events.ts';
import { settleSuspectCopies } from './last-batch.ts';
import { MergeControl } from './merge-control.ts';
import type { Snapshot } from './model.ts';
import { exportName } from './model.ts';
import { ExportPublisher } from './publisher.ts';
import { Recorder } from './recorder.ts';
import { Serial } from './serial.ts';
import { deviceInfo, snapshotInfo, storeInfo } from './status.ts';
import { replay } from './transition.ts';

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
  /** Points of deleted snapshots kept per device for `--since` (default 1). */
  cbtKeepDeleted?: number | undefined;
  /** Default merge rate limit, bytes per second (0, the default: none). */
  mergeSpeed?: number | undefined;
  /** Memory for verified copies kept for snapshot reads (copy-cache.ts); 0: none. */
  copyCache?: number | undefined;
}

/** The parts `start()` sets up. */
interface Parts {
  store: DiffStore | undefined;
  catalog: Catalog;
  stacks: Map<string, DeviceStack>;
  cbt: CbtControl;
  merges: MergeControl;
  commands: Commands;
  damage: DamageLog;
}

export class SnapshotManager {
  readonly events: EventBus;
  private readonly registry: ExportRegistry;
  private readonly log: Logger;
  private readonly opts: ManagerOptions;
  private running: Parts | undefined;
  /** Set as soon as the store is open (closed by `close()` even if `start()` fails later). */
  private opened: DiffStore | undefined;
  private checkpoints: Checkpointer | undefined;

  constructor(registry: ExportRegistry, log: Logger, opts: ManagerOptions) {
    this.registry = registry;
    this.log = log;
    this.opts = opts;
    this.events = new EventBus(log);
  }

  private get parts(): Parts {
    if (this.running === undefined) throw new NbdsnapError('BAD_CONFIG', 'the snapshot manager is not started');
    return this.running;
  }

  get store(): DiffStore | undefined {
    return this.opened;
  }

  /** The catalog (read only: it changes through the recorder alone). */
  get catalog(): Catalog {
    return this.parts.catalog;
  }

  get cbt(): CbtControl {
    return this.parts.cbt;
  }

  /** Open the store, replay it, and register every origin and snapshot export. */
  async start(): Promise<void> {
    const opts = this.opts;
    const opened =
      opts.store.length > 0
        ? await DiffStore.open(opts.store, { chunkSize: opts.chunkSize, transient: opts.transient })
        : undefined;
    const store = opened?.store;
    this.opened = store;
    const catalog = replay(opened?.records ?? [], store?.chunkSize ?? opts.chunkSize ?? 64 * 1024);
    if (store !== undefined) for (const slot of catalog.usedSlots()) store.claim(slot);
    if (store !== undefined) copyReaderOf(store, opts.copyCache);
    const stacks = new Map<string, DeviceStack>();
    const publisher = new ExportPublisher(this.registry, stacks);
    const lowSpace = new LowSpaceWatch(this.events, opts.lowSpacePercent);
    const checkpoints = store === undefined || store.transient ? undefined : new Checkpointer(catalog, store, this.log);
    this.checkpoints = checkpoints;
    const recorder = new Recorder(catalog, { store, publisher, events: this.events, lowSpace, checkpoints });
    if (store?.failedBefore !== undefined) await this.invalidateAfterFailure(store, catalog, recorder);
    const cbt = new CbtControl(catalog, recorder, store !== undefined && !store.transient);
    const damage = new DamageLog(store, recorder, this.events, this.log);

    for (const d of opts.devices) {
      let state = catalog.originNamed(d.name);
      if (state !== undefined && state.size !== d.device.size) {
        throw new NbdsnapError(
          'BAD_CONFIG',
          `device ${d.name} is ${d.device.size} bytes, but its snapshots were taken at ${state.size} bytes`,
        );
      }
      if (state === undefined) {
        const id = catalog.nextDeviceId();
        await recorder.record([{ type: 'DEVICE', device: id, size: d.device.size, name: d.name }]);
        state = catalog.origins.get(id);
        if (state === undefined) throw new NbdsnapError('CORRUPT', `device ${d.name} was not recorded`);
      }
      if (opts.cbtBlockSize > 0) await cbt.add(d.name, state.id, d.device.size, opts.cbtBlockSize);
      const stack = new DeviceStack(d.name, d.device, state, { store, recorder, cbt, events: this.events, damage });
      stacks.set(d.name, stack);
      publisher.addOrigin(stack, d.description, opts.readOnlyOrigins);
    }
    // After a crash: copies of the last batch whose data does not match (nothing is served yet).
    if (store !== undefined && (opened?.suspect?.length ?? 0) > 0) {
      const device = (name: string) => opts.devices.find((d) => d.name === name)?.device;
      await settleSuspectCopies(opened?.suspect ?? [], { catalog, store, damage, log: this.log, device });
    }
    const served: Snapshot[] = [];
    for (const snap of catalog.snapshots.values()) {
      if (!publisher.served(snap)) {
        this.log.warn('snapshot of a device not served now', { snapshot: exportName(snap) });
        continue;
      }
      served.push(snap);
      if (snap.state !== 'merging') publisher.expose(snap);
    }
    const serial = new Serial();
    const merges = new MergeControl({
      catalog,
      recorder,
      store,
      events: this.events,
      stacks,
      publisher,
      serial,
      damage,
      defaultSpeed: this.opts.mergeSpeed,
      keepDeleted: opts.cbtKeepDeleted ?? 1,
    });
    const origins = opts.devices.map((d) => ({ name: d.name, path: d.path, readOnly: opts.readOnlyOrigins }));
    const commands = new Commands({
      catalog,
      recorder,
      store,
      stacks,
      merges,
      events: this.events,
      lowSpace,
      serial,
      origins,
      keepDeleted: opts.cbtKeepDeleted ?? 1,
    });
    this.running = { store, catalog, stacks, cbt, merges, commands, damage };
    await checkpoints?.atStart(); // a long journal replayed: start the next one from the state
    await merges.resume(served);
    if (store !== undefined) lowSpace.check(store);
  }

  /**
   * A commit failed before this start: the journal ends at its last whole batch, so copies made
   * after it may be missing and no snapshot of that time can be proven exact. Record every valid
   * one invalid, then clear the failure flag: the store itself is consistent again.
   */
  private async invalidateAfterFailure(store: DiffStore, catalog: Catalog, recorder: Recorder): Promise<void> {
    const reason = `difference store failed: ${store.failedBefore}`;
    this.log.error('the difference store failed earlier; its snapshots are invalid', { reason });
    // Not a snapshot being merged: it takes no copies since its MERGE record (which is durable),
    // so it is exact, and the half-merged origin can only be made whole by finishing its merge.
    const valid = catalog.bySeq().filter((s) => s.state === 'valid');
    if (valid.length > 0)
      await recorder.record(valid.map((s) => ({ type: 'INVALID' as const, snapshot: s.id, reason })));
    await store.clearFailedBefore();
  }

  find(device: string, name: string): Snapshot {
    return this.parts.commands.find(device, name);
  }

  createSnapshot(devices: string[], name: string, writable: boolean): Promise<Snapshot[]> {
    return this.parts.commands.createSnapshot(devices, name, writable);
  }

  deleteSnapshot(device: string, name: string): Promise<void> {
    return this.parts.commands.deleteSnapshot(device, name);
  }

  startMerge(device: string, name: string, onNextStart: boolean, speed?: number) {
    return this.parts.commands.startMerge(device, name, onNextStart, speed);
  }

  mergeSpeed(device: string, name: string, speed: number) {
    return this.parts.commands.mergeSpeed(device, name, speed);
  }

  appendStore(range: StoreRange): Promise<void> {
    return this.parts.commands.appendStore(range);
  }

  /** `cbt points`: a device's change-tracking points, oldest first. */
  cbtPoints(device: string) {
    return this.parts.commands.points(device);
  }

  /** `cbt forget`: forget the point of a deleted snapshot. */
  cbtForget(device: string, name: string): Promise<void> {
    return this.parts.commands.forgetPoint(device, name);
  }

  /** `cbt mark-dirty`: record a range as changed now, as a write would. */
  markDirty(device: string, offset: number, length: number): Promise<void> {
    return this.parts.cbt.markDirty(device, this.parts.commands.stack(device).state.size, offset, length);
  }

  mergeStatus() {
    return [...this.parts.merges.status(), ...this.parts.merges.scheduled()];
  }

  list() {
    return this.parts.catalog.bySeq().map((s) => snapshotInfo(s, this.store));
  }

  /** `store scrub`: read every live copy in the store and record the damaged ones (`speed`: bytes/s, 0 none). */
  scrub(onProgress: (p: ScrubProgress) => void, speed = 0) {
    requireStore(this.store);
    const progress = (p: ScrubProgress) => {
      probes.scrub?.(p);
      onProgress(p);
    };
    return this.parts.damage
      .scrub([...this.parts.catalog.origins.values()], progress, speed)
      .finally(() => probes.scrub?.(undefined));
  }

  storeStatus() {
    const { catalog, stacks } = this.parts;
    const served = [...stacks.values()].map((s) => s.state);
    const unserved = [...catalog.origins.values()].filter((o) => !served.includes(o));
    return storeInfo(requireStore(this.store), [...served, ...unserved]);
  }

  status() {
    return {
      devices: [...this.parts.stacks.values()].map(({ state }) => deviceInfo(state)),
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
    if (this.store?.transient === true) await this.running?.merges.settle();
  }

  /** Shutdown of a durable store: running merges stop before their next run (resumed at the next start). */
  stopMerges(): Promise<void> {
    return this.running?.merges.stopAll() ?? Promise.resolve();
  }

  async close(): Promise<void> {
    await this.checkpoints?.settled();
    if (this.store !== undefined) closeCopyReader(this.store);
    await this.store?.close();
  }
}
