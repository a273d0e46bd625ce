/**
 * Snapshot and store events, in the style of blksnap's event queue: low free space, overflow,
 * snapshot invalidated, snapshot created / deleted. Each is logged and handed to subscribers
 * (the control socket streams them to `nbdsnap events`, one JSON object a line).
 */
import { EventEmitter } from 'node:events';
import type { Logger } from '../log.ts';

export type SnapshotEvent =
  | { type: 'low-space'; freeBytes: number; totalBytes: number; thresholdPercent: number }
  | { type: 'overflow'; device: string; snapshots: string[] }
  | { type: 'invalidated'; snapshot: string; reason: string }
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
      event.type === 'overflow' || event.type === 'invalidated' || event.type === 'merge-failed' ? 'warn' : 'info';
    this.log[level](`event ${event.type}`, { event: timed });
    this.emitter.emit('event', timed);
  }

  subscribe(fn: (e: TimedEvent) => void): () => void {
    this.emitter.on('event', fn);
    return () => this.emitter.off('event', fn);
  }
}
