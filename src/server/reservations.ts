/**
 * One connection's share of the server's memory budget (memory-budget.ts): what it has reserved,
 * the WRITE payload reserved while it arrives, the request that waits for room, and its place in
 * the budget's queue. Pure bookkeeping plus callbacks; the connection does the I/O.
 *
 * - A WRITE's payload is reserved once its header is read and before the payload is
 *   (`reservePayload`), a READ's reply before it is produced (`admit`).
 * - A refused reservation queues the connection in the budget; the owner stops reading meanwhile
 *   (`waiting`), and `resume` is called (outside the budget's wake loop) once it fits.
 * - Bytes come back with `release`, all of them when the connection closes (`close`).
 */
import { Command, type RequestMessage } from '../nbd-protocol/index.ts';
import type { MemoryBudget } from './memory-budget.ts';
import { MAX_IO } from './validate.ts';

export class Reservations {
  private readonly budget: MemoryBudget;
  /** Bytes this connection has reserved in the budget. */
  private held = 0;
  /** Part of `held` reserved for the WRITE whose payload is arriving. */
  payload = 0;
  /** A parsed request waiting for its reservation (reading is paused meanwhile). */
  blocked: RequestMessage | undefined;
  /** Queued in the budget: the owner must not read. */
  waiting = false;
  private closed = false;
  /** The payload length of the WRITE being received (the parser's `awaiting`). */
  private readonly awaiting: () => number;
  /** Called (in a microtask) once the connection may go on. */
  private readonly resume: () => void;

  constructor(budget: MemoryBudget, awaiting: () => number, resume: () => void) {
    this.budget = budget;
    this.awaiting = awaiting;
    this.resume = resume;
  }

  /** Bytes reserved by this connection now. */
  get bytes(): number {
    return this.held;
  }

  /** The bytes a request holds while it runs: its payload or its reply. */
  static cost(req: RequestMessage): number {
    if (req.type === Command.WRITE) return req.data?.length ?? 0;
    if (req.type === Command.READ && req.length <= MAX_IO) return req.length;
    return 0;
  }

  /** A WRITE's header has been read: reserve its payload, or queue (then `waiting`). */
  reservePayload(): void {
    const need = this.awaiting();
    if (need === 0 || this.payload > 0) return;
    if (this.take(need)) this.payload = need;
    else this.wait();
  }

  /**
   * The reservation for `req` (`cost`, 0 for nothing held): true if it is held (taken now, or as
   * its payload arrived), false if `req` now waits as `blocked`.
   */
  admit(req: RequestMessage, cost: number): boolean {
    if (req.type === Command.WRITE && this.payload > 0) {
      const reserved = this.payload;
      this.payload = 0;
      if (reserved !== cost) this.release(reserved - cost);
    } else if (cost > 0 && !this.take(cost)) {
      this.blocked = req;
      this.wait();
      return false;
    }
    this.blocked = undefined;
    return true;
  }

  release(n: number): void {
    const k = Math.min(n, this.held);
    if (k <= 0) return;
    this.held -= k;
    this.budget.give(k);
  }

  /** Leave the queue and give back everything (the connection closed). */
  close(): void {
    this.closed = true;
    this.budget.cancel(this.retryBound);
    this.release(this.held);
  }

  /** Stop waiting for the blocked request (it is answered without running); returns it. */
  unblock(): RequestMessage | undefined {
    const req = this.blocked;
    if (req === undefined) return undefined;
    this.budget.cancel(this.retryBound);
    this.waiting = false;
    this.blocked = undefined;
    return req;
  }

  private take(n: number): boolean {
    if (!this.budget.tryTake(n)) return false;
    this.held += n;
    return true;
  }

  private wait(): void {
    if (this.waiting) return;
    this.waiting = true;
    this.budget.wait(this.retryBound);
  }

  private readonly retryBound = () => this.retry();

  /** Called by the budget as bytes come back: true once this connection no longer waits. */
  private retry(): boolean {
    if (this.closed) return true;
    const need = this.blocked !== undefined ? Reservations.cost(this.blocked) : this.awaiting();
    if (need > 0 && !this.budget.fits(need)) return false;
    this.waiting = false;
    // Outside the budget's wake loop: the owner reserves, which must not re-enter it.
    queueMicrotask(() => {
      if (!this.waiting && !this.closed) this.resume();
    });
    return true;
  }
}
