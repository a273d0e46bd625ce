/**
 * The merge's rate limit (qemu's block-job `speed`): a token bucket over bytes, with the clock
 * injected so the logic is tested without timers. The merge job asks `delay()` before each run
 * and sleeps that long (0: go now), then `take()`s the bytes the run copied. The bucket may go
 * into debt by one run (a run is larger than what one slice earns at a low speed): the next
 * run then waits until the debt is paid, so the average stays at the limit whatever the run size.
 */
import { NbdsnapError } from '../errors.ts';

/** What the bucket may save up while the job is idle: this many seconds at the limit. */
const BURST_SECONDS = 0.1;

export class TokenBucket {
  /** Bytes per second; 0: no limit. */
  private bytesPerSecond: number;
  private tokens = 0;
  private last: number;
  private readonly now: () => number;

  /** `now`: milliseconds (Date.now, performance.now, or a test's clock). */
  constructor(bytesPerSecond: number, now: () => number) {
    this.bytesPerSecond = checkSpeed(bytesPerSecond);
    this.now = now;
    this.last = now();
  }

  get speed(): number {
    return this.bytesPerSecond;
  }

  /** Change the limit; what was earned at the old one is kept, a debt is forgiven. */
  set speed(bytesPerSecond: number) {
    checkSpeed(bytesPerSecond);
    this.refill();
    this.bytesPerSecond = bytesPerSecond;
    this.tokens = Math.max(0, Math.min(this.tokens, this.burst()));
  }

  /** Milliseconds to wait before the next run may start (0: now). */
  delay(): number {
    if (this.bytesPerSecond === 0) return 0;
    this.refill();
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens * 1000) / this.bytesPerSecond);
  }

  /** `bytes` were copied: spend them (into debt if need be). */
  take(bytes: number): void {
    this.refill();
    if (this.bytesPerSecond > 0) this.tokens -= bytes;
  }

  private burst(): number {
    return this.bytesPerSecond * BURST_SECONDS;
  }

  private refill(): void {
    const t = this.now();
    const elapsed = Math.max(0, t - this.last);
    this.last = t;
    if (this.bytesPerSecond === 0) return;
    this.tokens = Math.min(this.burst(), this.tokens + (elapsed * this.bytesPerSecond) / 1000);
  }
}

/** A speed is a whole number of bytes per second, 0 (no limit) or more. */
export function checkSpeed(bytesPerSecond: number): number {
  if (!Number.isSafeInteger(bytesPerSecond) || bytesPerSecond < 0) {
    throw new NbdsnapError('BAD_ARGUMENT', `merge speed ${bytesPerSecond} is not a whole number of bytes per second`);
  }
  return bytesPerSecond;
}
