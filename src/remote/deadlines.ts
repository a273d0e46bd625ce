/**
 * The deadlines of a remote session's requests: every request fails with EIO `timeoutMs` after
 * it was submitted, wherever it waits (queued while the remote is away, waiting for room in the
 * replay log, or in flight). `expireLate` finds and fails the late ones in the session's
 * collections and tells whether one was in flight on the link (the remote hangs: the session
 * drops the link); `DeadlineSweep` runs the check on a timer while requests are outstanding.
 * The check itself is pure (the clock is passed in).
 */
import type { LogEntry, ReplayLog } from './replay-log.ts';

/** What the sweep needs of a request. */
export interface Timed {
  deadline: number;
  settled: boolean;
}

/** The places a session keeps requests; the arrays are filtered in place of late ones. */
export interface Waiting<R extends Timed> {
  queue: R[];
  blocked: R[];
  readonly inflight: Set<R>;
  readonly log: ReplayLog<R>;
}

/**
 * Fail (`fail(r)`) every request of `w` whose deadline is at or before `now`, and take it out of
 * where it waited. True if one of them was on the wire (in flight, or a log entry sent and not
 * answered): the remote is not answering.
 */
export function expireLate<R extends Timed>(w: Waiting<R>, now: number, fail: (r: R) => void): boolean {
  const late = (r: R) => !r.settled && r.deadline <= now;
  let hung = false;
  for (const r of w.queue) if (late(r)) fail(r);
  for (const r of w.blocked) if (late(r)) fail(r);
  for (const r of w.inflight) {
    if (!late(r)) continue;
    w.inflight.delete(r);
    fail(r);
    hung = true;
  }
  w.queue = w.queue.filter((r) => !r.settled);
  w.blocked = w.blocked.filter((r) => !r.settled);
  for (const e of [...w.log.values()] as LogEntry<R>[]) {
    if (!late(e.item)) continue;
    if (e.state === 'sent') hung = true;
    w.log.remove(e.seq);
    fail(e.item);
  }
  return hung;
}

/** A timer that calls `tick` every quarter of the timeout (10 ms to 1 s) until stopped. */
export class DeadlineSweep {
  private timer: NodeJS.Timeout | undefined;
  private readonly every: number;
  private readonly tick: () => void;

  constructor(timeoutMs: number, tick: () => void) {
    this.every = Math.max(10, Math.min(1000, Math.floor(timeoutMs / 4)));
    this.tick = tick;
  }

  arm(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(this.tick, this.every);
    this.timer.unref?.();
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }
}
