/**
 * The reconnect policy: exponential back-off between attempts, from `initialMs` doubling up to
 * `maxMs`, with up to `jitter` (a fraction) taken off at random so that many hosts that lost the
 * same remote do not all knock at once. Pure: the random source is injected.
 */
export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
  /** 0..1: a delay is cut by up to this fraction of itself. */
  jitter: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { initialMs: 50, maxMs: 2000, jitter: 0.25 };

export class Backoff {
  private attempt = 0;
  private readonly policy: BackoffPolicy;
  private readonly random: () => number;

  constructor(policy: BackoffPolicy = DEFAULT_BACKOFF, random: () => number = Math.random) {
    this.policy = policy;
    this.random = random;
  }

  /** Attempts made since the last success. */
  get attempts(): number {
    return this.attempt;
  }

  /** The delay before the next attempt (0 for the first attempt after a loss). */
  next(): number {
    const n = this.attempt;
    this.attempt += 1;
    if (n === 0) return 0;
    const { initialMs, maxMs, jitter } = this.policy;
    const full = Math.min(maxMs, initialMs * 2 ** Math.min(n - 1, 30));
    return Math.round(full * (1 - jitter * this.random()));
  }

  /** A connection was made: the next loss starts again from an immediate attempt. */
  reset(): void {
    this.attempt = 0;
  }
}
