/**
 * The one way the catalog changes at run time (LevelDB's `LogAndApply`): records are committed
 * to the store's journal, durably (a transient store keeps nothing; without a store there is
 * nothing to commit), then each is applied to the catalog by `apply` (transition.ts), the same
 * function replay folds over the journal at start, and the server acts on the effects: freed
 * slots go back to the store, snapshot exports are published or withdrawn, `invalidated` events
 * are raised, free space is checked.
 *
 * Fail-stop: if the commit fails, nothing is applied and the caller gets EIO (the store refuses
 * every later commit). The catalog never says what the disk does not.
 */
import { errorMessage, NbdsnapError } from '../errors.ts';
import type { SlotData } from '../store/copy-writes.ts';
import type { JournalRecord } from '../store/records.ts';
import type { DiffStore } from '../store/store.ts';
import type { Catalog } from './catalog.ts';
import type { Checkpointer } from './checkpointer.ts';
import { forgetSlot } from './copy-read.ts';
import type { EventBus, LowSpaceWatch } from './events.ts';
import { exportName } from './model.ts';
import type { ExportPublisher } from './publisher.ts';
import { apply, type Effects, noEffects } from './transition.ts';

/** Whoever records journal records: commits them durably, then applies them to the catalog. */
export interface RecordSink {
  record(records: JournalRecord[], copies?: readonly SlotData[]): Promise<unknown>;
}

export interface RecorderParts {
  store: DiffStore | undefined;
  publisher: ExportPublisher;
  events: EventBus;
  lowSpace: LowSpaceWatch;
  /** Journal checkpoints: holds records back while one is written (checkpointer.ts). */
  checkpoints?: Checkpointer | undefined;
}

export class Recorder implements RecordSink {
  readonly catalog: Catalog;
  private readonly parts: RecorderParts;

  constructor(catalog: Catalog, parts: RecorderParts) {
    this.catalog = catalog;
    this.parts = parts;
  }

  /**
   * Commit `records` durably (with the `copies` they point to: DiffStore.commit), apply them in
   * order, act on their effects; returns the effects.
   */
  async record(records: JournalRecord[], copies?: readonly SlotData[]): Promise<Effects> {
    const gate = this.parts.checkpoints;
    if (gate === undefined) return this.commitAndApply(records, copies);
    const wait = gate.enter(); // a checkpoint being written holds records back
    if (wait !== undefined) await wait;
    try {
      return await this.commitAndApply(records, copies);
    } finally {
      gate.leave();
    }
  }

  private async commitAndApply(records: JournalRecord[], copies?: readonly SlotData[]): Promise<Effects> {
    const store = this.parts.store;
    if (store !== undefined) {
      try {
        await store.commit(records, copies);
      } catch (err) {
        const what = [...new Set(records.map((r) => r.type))].join(', ');
        throw new NbdsnapError('EIO', `the difference store could not record ${what}: ${errorMessage(err)}`, {
          cause: err,
        });
      }
    }
    let fx: Effects;
    if (records.length === 1) fx = apply(this.catalog, records[0] as JournalRecord);
    else {
      fx = noEffects();
      for (const rec of records) {
        const one = apply(this.catalog, rec);
        fx.freed.push(...one.freed);
        fx.created.push(...one.created);
        fx.removed.push(...one.removed);
        fx.invalidated.push(...one.invalidated);
        fx.merging.push(...one.merging);
      }
    }
    this.act(fx);
    return fx;
  }

  private act(fx: Effects): void {
    const { store, publisher, events, lowSpace } = this.parts;
    if (store !== undefined)
      for (const slot of fx.freed) {
        forgetSlot(store, slot); // before the slot can be handed out again (copy-cache.ts)
        store.release(slot);
      }
    for (const s of fx.created) publisher.expose(s);
    for (const s of fx.removed) publisher.hide(s);
    for (const s of fx.merging) publisher.hide(s);
    for (const s of fx.invalidated)
      events.emit({ type: 'invalidated', snapshot: exportName(s), reason: s.reason ?? '' });
    if (store !== undefined) lowSpace.check(store);
  }
}
