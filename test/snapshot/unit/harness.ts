/**
 * The snapshot manager in process, without a server: origins in memory, a store on a temporary
 * sparse file whose journal commit is faked in memory. Every record the runtime commits is kept
 * (in commit order, which is journal order), and the commit can be made to fail, so tests can
 * compare the run-time catalog with a replay of what was committed, and inject a store that
 * cannot make records durable.
 */
import { join } from 'node:path';
import { vi } from 'vitest';
import { MemoryDevice } from '../../../src/block/memory-device.ts';
import { NbdsnapError } from '../../../src/errors.ts';
import type { SlotData } from '../../../src/store/copy-writes.ts';
import { Logger } from '../../../src/log.ts';
import { ExportRegistry } from '../../../src/server/exports.ts';
import type { TimedEvent } from '../../../src/snapshot/events.ts';
import { SnapshotManager } from '../../../src/snapshot/manager.ts';
import type { JournalRecord } from '../../../src/store/records.ts';
import { StoreSpace } from '../../../src/store/space.ts';
import { DiffStore } from '../../../src/store/store.ts';
import { KiB, makeSparse, tempDir } from '../../helpers/snapshots.ts';
import { stampedImage } from '../../helpers/stamps.ts';

export const CHUNK = 4 * KiB;

export interface HarnessOptions {
  /** name -> size in bytes (content: stamped, seed 0) */
  devices: Record<string, number>;
  /** Data slots of the store (besides its superblock area and journal). */
  slots: number;
  cbtBlockSize?: number;
}

export class Harness {
  readonly manager: SnapshotManager;
  readonly registry = new ExportRegistry();
  readonly devices = new Map<string, MemoryDevice>();
  /** Every record committed successfully, in commit order. */
  readonly committed: JournalRecord[] = [];
  readonly events: TimedEvent[] = [];
  /** When set, every commit rejects with it (a store that cannot make records durable). */
  failure: Error | undefined;
  private readonly dir = tempDir('nbdsnap-unit-');

  constructor(opts: HarnessOptions) {
    for (const [name, size] of Object.entries(opts.devices)) this.devices.set(name, new MemoryDevice(size));
    const store = makeSparse(join(this.dir.path, 'store.img'), 128 * KiB + (opts.slots + 4) * CHUNK);
    this.manager = new SnapshotManager(this.registry, new Logger('silent'), {
      devices: [...this.devices].map(([name, device]) => ({ name, device, description: '' })),
      store: [StoreSpace.resolve(store)],
      chunkSize: CHUNK,
      transient: false,
      lowSpacePercent: 10,
      readOnlyOrigins: false,
      cbtBlockSize: opts.cbtBlockSize ?? 0,
    });
    this.manager.events.subscribe((e) => this.events.push(e));
  }

  /** Start the manager with the fake commit in place (restore with `vi.restoreAllMocks()`). */
  async start(): Promise<this> {
    const harness = this;
    vi.spyOn(DiffStore.prototype, 'commit').mockImplementation(async function (
      this: DiffStore,
      records: JournalRecord[],
      copies: readonly SlotData[] = [],
    ) {
      await Promise.resolve(); // a commit is never synchronous
      // The copies the records point to are written first, as the real commit does.
      for (const c of copies) await this.writeSlot(c.slot, c.data);
      if (harness.failure !== undefined) throw harness.failure;
      harness.committed.push(...records);
    });
    for (const device of this.devices.values()) await device.write(0, stampedImage(device.size, 0));
    await this.manager.start();
    return this;
  }

  failCommits(message = 'injected journal write error'): void {
    this.failure = new NbdsnapError('EIO', message);
  }

  /** The export's device (origin `DEV`, snapshot `DEV@SNAP`). */
  device(name: string) {
    const entry = this.registry.get(name);
    if (entry === undefined) throw new Error(`no export ${name}`);
    return entry.device;
  }

  get store(): DiffStore {
    const store = this.manager.store;
    if (store === undefined) throw new Error('no store');
    return store;
  }

  /** Resolves once no merge is running (scheduled ones are not). */
  async mergesDone(): Promise<void> {
    for (let i = 0; this.manager.mergeStatus().some((m) => m.state === 'merging'); i++) {
      if (i > 10_000) throw new Error(`merges never finished: ${JSON.stringify(this.manager.mergeStatus())}`);
      await new Promise((r) => setImmediate(r));
    }
  }

  close(): void {
    this.manager.close();
    this.dir.cleanup();
  }
}
