/**
 * Snapshot and store events, in the style of blksnap's event queue: low free space, overflow,
 * snapshot invalidated, a damaged store copy, snapshot created / deleted. Each is logged and handed to subscribers
 * (the control socket streams them to `nbdsnap events`, one JSON object a line).
 */
import { EventEmitter } from 'node:events';
import type { Logger } from '../log.ts';

export type SnapshotEvent =
  | { type: 'low-space'; freeBytes: number; totalBytes: number; thresholdPercent: number }
  | { type: 'overflow'; device: string; snapshots: string[] }
  | { type: 'invalidated'; snapshot: string; reason: string }
  /** A store copy failed its checksum: recorded lost; reads of it by `snapshots` answer EIO. */
  | { type: 'damaged'; device: string; chunk: number; slot: number; snapshots: string[] }
  | { type: 'snapshot-created'; snapshots: string[] }
  | { type: 'snapshot-deleted'; snapshot: string }
  | { type: 'store-appended'; range: string; totalBytes: number }
  | { type: 'merge-started'; snapshot: string }
  | { type: 'merge-finished'; snapshot: string }
  | { type: 'merge-failed'; snapshot: string; chunk: number; error: string };

export type TimedEvent = SnapshotEvent & { time: string };

export class EventBus {
  private readonly emitter = new EventEmitter();
  private readonly log: Logger;

  constructor(log: Logger) {
    this.log = log;
    this.emitter.setMaxListeners(0);
  }

  emit(event: SnapshotEvent): void {
    const timed: TimedEvent = { ...event, time: new Date().toISOString() };
    const level =
      event.type === 'damaged'
        ? 'error'
        : event.type === 'overflow' || event.type === 'invalidated' || event.type === 'merge-failed'
          ? 'warn'
          : 'info';
    this.log[level](`event ${event.type}`, { event: timed });
    this.emitter.emit('event', timed);
  }

  subscribe(fn: (e: TimedEvent) => void): () => void {
    this.emitter.on('event', fn);
    return () => this.emitter.off('event', fn);
  }
}

/** Raises `low-space` once when free space drops below the threshold, again after it recovered. */
export class LowSpaceWatch {
  private raised = false;
  private readonly events: EventBus;
  private readonly percent: number;

  constructor(events: EventBus, percent: number) {
    this.events = events;
    this.percent = percent;
  }

  check(store: { freeSlots: number; totalSlots: number; chunkSize: number }): void {
    if (store.totalSlots === 0) return;
    const freePercent = (100 * store.freeSlots) / store.totalSlots;
    if (freePercent >= this.percent) {
      this.raised = false;
      return;
    }
    if (this.raised) return;
    this.raised = true;
    this.events.emit({
      type: 'low-space',
      freeBytes: store.freeSlots * store.chunkSize,
      totalBytes: store.totalSlots * store.chunkSize,
      thresholdPercent: this.percent,
    });
  }
}
