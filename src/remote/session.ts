/**
 * A remote device's requests across connection losses: the state machine behind NbdDevice.
 *
 *   ready ──loss──> connecting ──connected──> replaying ──log re-sent──> ready
 *     │                 │  (back-off between attempts)
 *     └──────close──────┴──> closed            size changed ──> failed
 *
 * - Deadlines (deadlines.ts): a request not answered `timeoutMs` after its submission fails with
 *   EIO and is never sent again; one late on the wire means the remote hangs: the link is remade.
 * - On a loss, reads, block status, cache and flush requests in flight go back to the queue and
 *   are sent again once the link is back. Writes, zeroes and trims live in the replay log
 *   (replay-log.ts) until a flush covers them: after a reconnect the whole log is re-sent, in
 *   order, before anything else, so that acknowledged writes the remote lost with its cache are
 *   there again before any later flush claims them durable.
 * - A logged write that the remote refuses on replay, after it was acknowledged, fails the next
 *   FLUSH (as a lost write-back fails fsync): its caller was told "done".
 * - Nothing is dropped silently: every request settles exactly once, with its answer, its error,
 *   EIO at its deadline, or ESHUTDOWN at close.
 * - Memory: the log holds at most `replayBudget` bytes of payload (one larger write alone: the
 *   callers' pooled buffers held, or copies, payloads.ts); from half of it the session flushes by
 *   itself while writes go on, and beyond it new writes wait for that flush.
 * The link (one or several connections, pool.ts) is injected, so this is tested without a server.
 */
import { NbdsnapError } from '../errors.ts';
import { Backoff } from './backoff.ts';
import { DeadlineSweep, expireLate } from './deadlines.ts';
import type { OpKind, RemoteLink, RemoteOp } from './link.ts';
import { Payloads } from './payloads.ts';
import { type LogEntry, ReplayLog } from './replay-log.ts';

export type { OpKind, RemoteLink, RemoteOp };

export interface SessionOptions {
  connect: () => Promise<RemoteLink>;
  /** Whether a rejection of `send` was a connection loss (rather than an error reply). */
  isLoss: (err: unknown) => boolean;
  timeoutMs: number;
  replayBudget: number;
  backoff?: Backoff;
  /** What to call the remote in messages (a URI without credentials). */
  name: string;
  /** Told about losses and reconnects (logging). */
  onEvent?: (event: 'lost' | 'reconnected' | 'retry' | 'failed', detail: string) => void;
  now?: () => number;
}

export type SessionState = 'ready' | 'connecting' | 'replaying' | 'closed' | 'failed';

const WRITES: ReadonlySet<OpKind> = new Set(['write', 'zero', 'trim']);

interface Req {
  seq: number;
  op: RemoteOp;
  deadline: number;
  settled: boolean;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  /** Flushes: the log entries acknowledged when it was sent. */
  covers?: number[];
  held?: boolean; // writes: the log keeps the caller's buffer itself (payloads.ts), not a copy
}

export class RemoteSession {
  private stateNow: SessionState = 'ready';
  private link: RemoteLink | undefined;
  private epoch = 0;
  private nextSeq = 1;
  /** Reads, status, cache and flushes not yet sent on the current link. */
  private queue: Req[] = [];
  /** Writes waiting for room in the log. */
  private blocked: Req[] = [];
  /** Reads, status, cache and flushes in flight on the current link. */
  private readonly inflight = new Set<Req>();
  private readonly log = new ReplayLog<Req>((req) => this.dropPayload(req));
  private readonly payloads = new Payloads();
  private flushError: Error | undefined;
  private selfFlush = false;
  private readonly sweep: DeadlineSweep;
  private retry: NodeJS.Timeout | undefined;
  private fatal: Error | undefined;
  private readonly backoff: Backoff;
  private readonly now: () => number;
  private readonly opts: SessionOptions;
  readonly size: number;

  constructor(link: RemoteLink, opts: SessionOptions) {
    this.opts = opts;
    this.size = link.size;
    this.backoff = opts.backoff ?? new Backoff();
    this.now = opts.now ?? Date.now;
    this.sweep = new DeadlineSweep(opts.timeoutMs, () => this.expire());
    this.use(link);
  }

  get state(): SessionState {
    return this.stateNow;
  }
  /** Payload bytes held for replay. */
  get logBytes(): number {
    return this.log.bytes;
  }
  /** Requests not yet settled. */
  get outstanding(): number {
    let n = this.queue.length + this.blocked.length + this.inflight.size;
    for (const e of this.log.values()) if (!e.item.settled) n++;
    return n;
  }

  submit(op: RemoteOp): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (this.stateNow === 'closed') {
        reject(new NbdsnapError('ESHUTDOWN', `remote ${this.opts.name}: the device is closed`));
        return;
      }
      if (this.fatal !== undefined) {
        reject(this.fatal);
        return;
      }
      const req: Req = {
        seq: this.nextSeq++,
        op,
        deadline: this.now() + this.opts.timeoutMs,
        settled: false,
        resolve,
        reject,
      };
      this.sweep.arm();
      if (WRITES.has(op.kind)) this.admit(req);
      else {
        this.queue.push(req);
        if (this.stateNow === 'ready') this.pump();
      }
    });
  }

  /** Stop: everything not yet answered fails with ESHUTDOWN; the link is closed gracefully. */
  async close(): Promise<void> {
    if (this.stateNow === 'closed') return;
    this.stateNow = 'closed';
    this.stopTimers();
    const err = new NbdsnapError('ESHUTDOWN', `remote ${this.opts.name}: the device was closed`);
    this.payloads.linger(); // the link may still be sending the log's payloads
    this.failAll(err);
    const link = this.link;
    this.link = undefined;
    await link?.close();
    this.payloads.end();
  }

  // --- writes and the log ----------------------------------------------------------------------

  private admit(req: Req): void {
    const bytes = req.op.kind === 'write' ? req.op.length : 0;
    if (this.blocked.length > 0 || (this.log.bytes > 0 && this.log.bytes + bytes > this.opts.replayBudget)) {
      this.blocked.push(req);
      this.flushForRoom();
      return;
    }
    // Kept until a flush covers it, though its caller is answered before (payloads.ts).
    const data = req.op.data;
    if (data !== undefined) {
      const kept = this.payloads.keep(data);
      req.held = kept === data;
      req.op.data = kept; // the op is the session's (made by the caller for this request)
    }
    const entry = this.log.add(req.seq, req.op.offset, req.op.length, bytes, req);
    if (this.stateNow === 'ready') void this.sendEntry(entry);
  }

  private flushForRoom(): void {
    if (this.selfFlush) return;
    this.selfFlush = true;
    this.submit({ kind: 'flush', offset: 0, length: 0, flags: 0 }).then(
      () => {
        this.selfFlush = false;
        this.unblock();
      },
      (err: unknown) => {
        this.selfFlush = false;
        // No room can be made: the writes waiting for it fail rather than wait for nothing.
        const why = new NbdsnapError(
          'EIO',
          `remote ${this.opts.name}: the replay log is full and flushing it failed (${(err as Error).message})`,
        );
        for (const req of this.blocked.splice(0)) this.settle(req, why);
      },
    );
  }

  private unblock(): void {
    const waiting = this.blocked;
    this.blocked = [];
    for (const req of waiting) if (!req.settled) this.admit(req);
  }

  /** Send a log entry on the current link; resolves once its answer was handled. */
  private sendEntry(entry: LogEntry<Req>): Promise<void> {
    const link = this.link as RemoteLink;
    const epoch = this.epoch;
    entry.state = 'sent';
    const req = entry.item;
    return link.send(req.op).then(
      () => {
        if (epoch !== this.epoch || this.log.get(req.seq) !== entry) return;
        entry.state = 'acked';
        this.settle(req, undefined);
        // From half the budget on, a flush runs while writes go on, so that room is usually made
        // before the log is full (writes then wait for a flush only when the remote flushes slower
        // than it is written to)
        if (this.stateNow === 'ready' && (this.blocked.length > 0 || this.log.bytes >= this.opts.replayBudget / 2))
          this.flushForRoom();
      },
      (err: unknown) => {
        if (epoch !== this.epoch || this.log.get(req.seq) !== entry) return;
        if (this.opts.isLoss(err)) {
          this.onLoss(epoch, err);
          return;
        }
        this.log.remove(req.seq);
        if (!req.settled) this.settle(req, err);
        // Acknowledged before, refused now that it is sent again: the next flush must fail.
        else
          this.flushError ??= new NbdsnapError(
            'EIO',
            `remote ${this.opts.name}: a write acknowledged before a reconnect was refused when sent again (${(err as Error).message}); data written since the last flush may be lost`,
          );
      },
    );
  }

  /** A write left the log (flushed, failed, timed out): its payload is free. */
  private dropPayload(req: Req): void {
    const data = req.op.data;
    if (data !== undefined) this.payloads.drop(data, req.held === true, this.opts.replayBudget - this.log.bytes);
  }

  // --- reads, status, cache, flush ---------------------------------------------------------------

  private pump(): void {
    const queued = this.queue;
    this.queue = [];
    for (const req of queued) if (!req.settled) this.sendOther(req);
  }

  private sendOther(req: Req): void {
    const link = this.link as RemoteLink;
    const epoch = this.epoch;
    if (req.op.kind === 'flush') req.covers = this.log.covered();
    this.inflight.add(req);
    link.send(req.op).then(
      (value) => {
        if (epoch !== this.epoch || !this.inflight.delete(req)) return;
        if (req.op.kind === 'flush') {
          this.log.flushed(req.covers ?? []);
          const lost = this.flushError;
          this.flushError = undefined;
          this.settle(req, lost, undefined);
          this.unblock();
          return;
        }
        this.settle(req, undefined, value);
      },
      (err: unknown) => {
        if (epoch !== this.epoch || !this.inflight.has(req)) return;
        if (this.opts.isLoss(err)) {
          this.onLoss(epoch, err);
          return;
        }
        this.inflight.delete(req);
        this.settle(req, err);
      },
    );
  }

  private settle(req: Req, err: unknown, value?: unknown): void {
    if (req.settled) return;
    req.settled = true;
    if (err === undefined) req.resolve(value);
    else req.reject(err);
  }

  // --- losing and finding the remote -------------------------------------------------------------

  private use(link: RemoteLink): void {
    this.link = link;
    const epoch = this.epoch;
    void link.lost.then((err) => this.onLoss(epoch, err));
  }

  private onLoss(epoch: number, err: unknown): void {
    if (epoch !== this.epoch || this.stateNow === 'closed' || this.stateNow === 'failed') return;
    this.epoch += 1;
    const link = this.link;
    this.link = undefined;
    link?.destroy('connection given up');
    this.stateNow = 'connecting';
    this.log.lost();
    const back = [...this.inflight];
    this.inflight.clear();
    this.queue = [...back, ...this.queue].sort((a, b) => a.seq - b.seq);
    this.opts.onEvent?.('lost', (err as Error)?.message ?? String(err));
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    const delay = this.backoff.next();
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.reconnect();
    }, delay);
  }

  private async reconnect(): Promise<void> {
    let link: RemoteLink;
    try {
      link = await this.opts.connect();
    } catch (err) {
      if (this.stateNow !== 'connecting') return;
      this.opts.onEvent?.('retry', (err as Error).message);
      this.scheduleReconnect();
      return;
    }
    if (this.stateNow !== 'connecting') {
      await link.close();
      return;
    }
    if (link.size !== this.size) {
      link.destroy('export changed size');
      this.failForGood(
        new NbdsnapError(
          'EIO',
          `remote ${this.opts.name} came back with size ${link.size}, not ${this.size}: not the same export; failing every request`,
        ),
      );
      return;
    }
    this.backoff.reset();
    this.stateNow = 'replaying';
    this.use(link);
    await this.replay(this.epoch);
  }

  /** Send the log again, in order, then everything queued. */
  private async replay(epoch: number): Promise<void> {
    let replayed = 0;
    for (;;) {
      if (epoch !== this.epoch) return;
      const batch = this.log.nextBatch();
      if (batch.length === 0) break;
      replayed += batch.length;
      await Promise.all(batch.map((e) => this.sendEntry(e)));
    }
    if (epoch !== this.epoch) return;
    this.stateNow = 'ready';
    this.opts.onEvent?.('reconnected', `${replayed} logged request(s) sent again`);
    this.pump();
    this.unblock();
  }

  private failForGood(err: Error): void {
    this.fatal = err;
    this.stateNow = 'failed';
    this.stopTimers();
    this.opts.onEvent?.('failed', err.message);
    this.failAll(err);
  }

  private failAll(err: Error): void {
    for (const req of [...this.queue, ...this.blocked, ...this.inflight]) this.settle(req, err);
    this.queue = [];
    this.blocked = [];
    this.inflight.clear();
    for (const e of [...this.log.values()]) {
      this.settle(e.item, err);
      this.log.remove(e.seq);
    }
    if (this.stateNow !== 'closed') this.payloads.end(); // closed: once the link is (close)
  }

  // --- deadlines (deadlines.ts) ------------------------------------------------------------------

  private expire(): void {
    const why = this.stateNow === 'ready' ? 'the remote does not answer' : 'the remote is unreachable';
    const timeout = () =>
      new NbdsnapError('EIO', `remote ${this.opts.name}: no answer within ${this.opts.timeoutMs / 1000} s (${why})`);
    const w = { queue: this.queue, blocked: this.blocked, inflight: this.inflight, log: this.log };
    const hung = expireLate(w, this.now(), (r) => this.settle(r, timeout()));
    this.queue = w.queue;
    this.blocked = w.blocked;
    if (hung && this.link !== undefined) this.onLoss(this.epoch, timeout());
    if (this.outstanding === 0) this.sweep.stop();
  }

  private stopTimers(): void {
    this.sweep.stop();
    if (this.retry !== undefined) clearTimeout(this.retry);
    this.retry = undefined;
  }
}
