/**
 * Damaged store copies. Every copy carries the checksum of its data (exception-table.ts); a
 * read whose data fails it never returns those bytes. `DamageLog.record` then raises a `damaged`
 * event naming the snapshots that read it and records LOST through the recorder (commit, then
 * apply: transition.ts marks the copy lost, so every later read of it answers EIO, also after a
 * restart). Until then the copy still fails its checksum at every read. `DamageLog.scrub` reads every
 * live copy through the same check (`nbdsnap store scrub` on a running server).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage, NbdsnapError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { DiffStore } from '../store/store.ts';
import { readVerified } from '../store/verify.ts';
import type { EventBus } from './events.ts';
import { type Copy, sameCopy } from './exception-table.ts';
import type { OriginState } from './model.ts';
import { exportName } from './model.ts';
import { TokenBucket } from './rate-limit.ts';
import type { RecordSink } from './recorder.ts';

export interface DamagedCopy {
  device: string;
  chunk: number;
  slot: number;
  snapshots: string[];
}

export interface ScrubProgress {
  checked: number;
  total: number;
  damaged: number;
}

export interface ScrubReport extends ScrubProgress {
  /** Copies recorded lost before this scrub (not read again). */
  lostBefore: number;
  bytes: number;
  found: DamagedCopy[];
}

/** Copies read at once by a scrub. */
const SCRUB_PARALLELISM = 4;

/** The snapshots (export names) that read `copy` for `chunk`. */
export function readersOf(origin: OriginState, chunk: number, copy: Copy): string[] {
  return origin.snapshots
    .filter((s) => {
      const src = origin.table.resolve(chunk, s);
      return s.state !== 'invalid' && src.from === 'store' && sameCopy(src.copy, copy);
    })
    .map(exportName);
}

/**
 * `copy` as held now for `chunk` (with its current `lost` flag), or undefined once it is freed
 * (its slot may then be reused). Copies are values (exception-table.ts): one read earlier may
 * carry a stale `lost`.
 */
export function heldCopy(origin: OriginState, chunk: number, copy: Copy): Copy | undefined {
  for (const s of origin.snapshots) {
    const own = s.privateChunks.get(chunk);
    if (own !== undefined && sameCopy(own, copy)) return own;
  }
  const shared = origin.table.copyAt(chunk, copy.slot);
  return shared !== undefined && sameCopy(shared, copy) ? shared : undefined;
}

/**
 * The EIO for a read of a damaged copy, once the damage is recorded (`record`: LOST, through the
 * DamageLog). The read fails whatever happens; if LOST cannot be recorded either (the store has
 * failed: DamageLog logged it), the error says so. That is no loss of safety: an unrecorded copy
 * still fails its checksum at every read.
 */
export async function damagedCopyError(
  what: string,
  chunk: number,
  copy: Copy,
  record: (chunk: number, copy: Copy) => Promise<void>,
): Promise<NbdsnapError> {
  let also = '';
  if (!copy.lost) {
    try {
      await record(chunk, copy);
    } catch (err) {
      also = `; recording it lost failed too: ${errorMessage(err)}`;
    }
  }
  return new NbdsnapError(
    'EIO',
    `${what}chunk ${chunk} is damaged in the difference store (slot ${copy.slot}, checksum mismatch)${also}`,
  );
}

export class DamageLog {
  private readonly store: DiffStore | undefined;
  private readonly sink: RecordSink;
  private readonly events: EventBus;
  private readonly log: Logger;
  /** LOST records on their way to the journal, by slot. */
  private readonly recording = new Map<number, Promise<void>>();

  constructor(store: DiffStore | undefined, sink: RecordSink, events: EventBus, log: Logger) {
    this.store = store;
    this.sink = sink;
    this.events = events;
    this.log = log;
  }

  /** The copy of `chunk` of `origin` failed its checksum. Resolves once LOST is durable (rejects if it cannot be). */
  record(origin: OriginState, chunk: number, copy: Copy): Promise<void> {
    const pending = this.recording.get(copy.slot);
    if (pending !== undefined) return pending;
    // Recorded lost meanwhile, or freed (nothing reads it any more): nothing to record.
    const now = heldCopy(origin, chunk, copy);
    if (now === undefined || now.lost) return Promise.resolve();
    const snapshots = readersOf(origin, chunk, copy);
    this.events.emit({ type: 'damaged', device: origin.name, chunk, slot: copy.slot, snapshots });
    const done = this.sink
      .record([{ type: 'LOST', device: origin.id, chunk, slot: copy.slot }])
      .then(() => undefined)
      .catch((err: unknown) => {
        this.log.error('could not record a damaged chunk as lost', {
          device: origin.name,
          chunk,
          err: errorMessage(err),
        });
        throw err;
      })
      .finally(() => this.recording.delete(copy.slot));
    this.recording.set(copy.slot, done);
    return done;
  }

  /** Read every live copy of `origins` and record the damaged ones. */
  async scrub(
    origins: readonly OriginState[],
    onProgress: (p: ScrubProgress) => void,
    speed = 0,
  ): Promise<ScrubReport> {
    const store = this.store;
    const todo: { origin: OriginState; chunk: number; copy: Copy }[] = [];
    let lostBefore = 0;
    for (const origin of origins) {
      const add = (chunk: number, copy: Copy) => {
        if (copy.lost) lostBefore += 1;
        else todo.push({ origin, chunk, copy });
      };
      for (const [chunk, v] of origin.table.entries()) add(chunk, v);
      for (const s of origin.snapshots) for (const [chunk, own] of s.privateChunks) add(chunk, own);
    }
    const report: ScrubReport = { checked: 0, total: todo.length, damaged: 0, lostBefore, bytes: 0, found: [] };
    if (store === undefined) return report;
    let next = 0;
    let reported = Date.now();
    // --speed: the same token bucket as a merge's, shared by the readers
    const bucket = new TokenBucket(speed, () => performance.now());
    const worker = async () => {
      while (next < todo.length) {
        const { origin, chunk, copy } = todo[next++] as (typeof todo)[number];
        const length = origin.chunkLength(chunk);
        if (!copy.lost && heldCopy(origin, chunk, copy)?.lost === false) {
          const wait = bucket.delay();
          if (wait > 0) await sleep(wait);
          bucket.take(length);
          const data = await readVerified(store, copy.slot, copy.crc, length);
          // A copy freed while it was read may have been reused: not damage.
          if (data === undefined && heldCopy(origin, chunk, copy)?.lost === false) {
            report.found.push({
              device: origin.name,
              chunk,
              slot: copy.slot,
              snapshots: readersOf(origin, chunk, copy),
            });
            report.damaged += 1;
            await this.record(origin, chunk, copy);
          }
          report.bytes += length;
        }
        report.checked += 1;
        if (Date.now() - reported >= 1000) {
          reported = Date.now();
          onProgress({ checked: report.checked, total: report.total, damaged: report.damaged });
        }
      }
    };
    await Promise.all(Array.from({ length: SCRUB_PARALLELISM }, worker));
    onProgress({ checked: report.checked, total: report.total, damaged: report.damaged });
    return report;
  }
}
