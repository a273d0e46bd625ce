/**
 * When to checkpoint the journal, and holding records back while it is done. The journal is
 * append-only; once it is larger than max(a few blocks, 1.5 times what the last checkpoint wrote),
 * the recorder's next applied batch starts a checkpoint: new `record()` calls wait at a gate,
 * those in flight finish applying, the catalog is written as records (checkpoint.ts) into a new
 * journal that range 0's label then names (`DiffStore.checkpoint`), and the gate opens. So the
 * journal stays within a constant factor of the live state, whatever the history, and a restart
 * replays the state, not the history. Also at start, after replay (a server that ran for a year
 * restarts once, then is compact).
 *
 * A checkpoint that fails before the label names it changes nothing (a warning; the journal goes
 * on). One whose label write fails leaves the store failed (DiffStore): later commits fail.
 *
 * Test tuning: `NBDSNAP_CHECKPOINT_BYTES=N` replaces the minimum (a few blocks) by N bytes, so a
 * tiny N checkpoints as soon as the journal is 1.5 times the last checkpoint (crash tests).
 */
import { errorMessage } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { DiffStore } from '../store/store.ts';
import type { Catalog } from './catalog.ts';
import { checkpointRecords } from './checkpoint.ts';

/** The journal is never checkpointed below this many blocks (two are its minimum). */
const MIN_BLOCKS = 4;
/** Checkpoint once the journal is this many times what the last checkpoint wrote. */
const FACTOR = 1.5;

export class Checkpointer {
  private readonly catalog: Catalog;
  private readonly store: DiffStore;
  private readonly log: Logger;
  private readonly min: number;
  /** Bytes the last checkpoint wrote (or its estimate at start). */
  private last = 0;
  private gate: Promise<void> | undefined;
  private inflight = 0;
  private drained: (() => void) | undefined;

  constructor(catalog: Catalog, store: DiffStore, log: Logger) {
    this.catalog = catalog;
    this.store = store;
    this.log = log;
    const env = process.env.NBDSNAP_CHECKPOINT_BYTES;
    this.min = env !== undefined && /^\d+$/.test(env) ? Number(env) : MIN_BLOCKS * store.chunkSize;
  }

  /** Journal bytes above which a checkpoint is taken. */
  get threshold(): number {
    return Math.max(this.min, FACTOR * this.last);
  }

  /**
   * Before a commit: undefined when it may go ahead at once, else a promise to wait for (a
   * checkpoint is running). Each `enter` that returned undefined is paired with one `leave`.
   */
  enter(): Promise<void> | undefined {
    if (this.gate !== undefined) return this.gate.then(() => this.enter());
    this.inflight += 1;
    return undefined;
  }

  /** After the batch was applied (or failed): a checkpoint starts if the journal is due one. */
  leave(): void {
    this.inflight -= 1;
    if (this.inflight === 0) this.drained?.();
    if (this.gate === undefined && this.due()) void this.run('threshold');
  }

  /** Resolves once no checkpoint is running (before a graceful stop). */
  async settled(): Promise<void> {
    while (this.gate !== undefined) await this.gate;
  }

  /** At start, after replay: checkpoint a journal larger than the state needs. */
  async atStart(): Promise<void> {
    this.last = estimateBytes(this.catalog);
    if (this.due()) await this.run('start');
  }

  private due(): boolean {
    return !this.store.transient && this.store.failure === undefined && this.store.journalBytes > this.threshold;
  }

  /** Close the gate now, wait for the records in flight, write the checkpoint, open the gate. */
  private run(why: 'threshold' | 'start'): Promise<void> {
    let open = () => {};
    this.gate = new Promise((resolve) => {
      open = resolve;
    });
    return (async () => {
      const t0 = performance.now();
      try {
        if (this.inflight > 0) await new Promise<void>((resolve) => (this.drained = resolve));
        this.drained = undefined;
        const before = this.store.journalBytes;
        const t1 = performance.now();
        const written = await this.store.checkpoint(checkpointRecords(this.catalog));
        if (written !== undefined) {
          this.last = written.bytes;
          this.log.info('journal checkpoint', {
            why,
            bytesBefore: before,
            bytesAfter: this.store.journalBytes,
            records: written.records,
            ms: Math.round(performance.now() - t1),
            stalledMs: Math.round(performance.now() - t0),
          });
        }
      } catch (err) {
        if (this.store.failure !== undefined)
          this.log.error('journal checkpoint failed; the store takes no more records', { error: errorMessage(err) });
        else {
          this.log.warn('journal checkpoint skipped; the journal goes on', { error: errorMessage(err) });
          // Not again at once: only once the journal has grown as much again.
          this.last = Math.max(this.last, this.store.journalBytes);
        }
      } finally {
        this.gate = undefined;
        open();
      }
    })();
  }
}

/** Bytes a checkpoint of `cat` would take, roughly (records of 40 to 48 bytes), without making it. */
function estimateBytes(cat: Catalog): number {
  let records = 0;
  for (const o of cat.origins.values()) records += o.table.size + o.snapshots.length + 1;
  for (const s of cat.snapshots.values()) records += s.privateChunks.size;
  let bytes = records * 48;
  for (const t of cat.trackers.values()) bytes += t.footprint().bytes * 5; // a run: ~8 bytes kept, 40 recorded
  return bytes;
}
