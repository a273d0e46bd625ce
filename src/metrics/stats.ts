/**
 * The figures the data path keeps, as plain numbers: per export (requests, bytes, errors,
 * latency, requests in flight) and per device (copy-on-write copies). Nothing here allocates
 * per request: a connection looks its export's ExportStats up once, then only adds to numbers
 * and typed arrays. The Prometheus side (families.ts) reads them at scrape time.
 */
import { Command } from '../nbd-protocol/index.ts';

/** Label values of the `command` label, indexed by NBD command type (8: anything else). */
export const COMMAND_LABELS = [
  'read',
  'write',
  'disc',
  'flush',
  'trim',
  'cache',
  'write_zeroes',
  'block_status',
  'other',
] as const;
const OTHER = COMMAND_LABELS.length - 1;

export const commandIndex = (type: number): number => (type >= 0 && type < OTHER ? type : OTHER);

/** Upper bounds (seconds) of request latency buckets: 50 us to 10 s. */
export const REQUEST_BUCKETS = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
/** Upper bounds (seconds) of copy-on-write copy latency buckets: 100 us to 10 s. */
export const COPY_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** A histogram's counts: `counts[i]` observations in (bounds[i-1], bounds[i]], the last one above every bound. */
export class Buckets {
  readonly bounds: readonly number[];
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(bounds: readonly number[]) {
    this.bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(seconds: number): void {
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && seconds > (bounds[i] as number)) i++;
    this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += seconds;
    this.count += 1;
  }

  /** Cumulative counts, one per bound then +Inf: Prometheus' `_bucket{le=...}` values. */
  cumulative(): number[] {
    const out: number[] = [];
    let running = 0;
    for (const c of this.counts) {
      running += c;
      out.push(running);
    }
    return out;
  }
}

export class ExportStats {
  /** Requests answered, by command index (success or error). */
  readonly requests = new Float64Array(COMMAND_LABELS.length);
  /** Latency by command index, created on the first request of that command. */
  readonly latency: (Buckets | undefined)[] = new Array(COMMAND_LABELS.length).fill(undefined);
  /** Error replies by NBD errno value. */
  readonly errors = new Map<number, number>();
  readBytes = 0;
  writtenBytes = 0;
  inFlight = 0;

  /** A request starts: returns its start time for `end`. */
  begin(): number {
    this.inFlight += 1;
    return performance.now();
  }

  /** A request was answered: `error` 0 on success, else the NBD errno sent. */
  end(type: number, length: number, error: number, started: number): void {
    this.inFlight -= 1;
    const i = commandIndex(type);
    this.requests[i] = (this.requests[i] as number) + 1;
    let h = this.latency[i];
    if (h === undefined) {
      h = new Buckets(REQUEST_BUCKETS);
      this.latency[i] = h;
    }
    h.observe((performance.now() - started) / 1000);
    if (error !== 0) this.error(error);
    else if (type === Command.READ) this.readBytes += length;
    else if (type === Command.WRITE) this.writtenBytes += length;
  }

  /** A request answered with an error without being run (the server is shutting down). */
  refused(type: number, error: number): void {
    const i = commandIndex(type);
    this.requests[i] = (this.requests[i] as number) + 1;
    this.error(error);
  }

  private error(error: number): void {
    this.errors.set(error, (this.errors.get(error) ?? 0) + 1);
  }
}

export class CopyStats {
  copies = 0;
  bytes = 0;
  readonly latency = new Buckets(COPY_BUCKETS);
}
