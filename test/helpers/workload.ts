/**
 * A random, pipelined origin workload with an exact in-memory model, for the corruption and
 * crash tests.
 *
 * Several NBD connections each keep `depth` requests in flight: stamped writes of mixed sizes
 * (sector-aligned, unaligned, spanning chunk boundaries, in the short last chunk, large ones over
 * many chunks, some with FUA), TRIMs, WRITE_ZEROES and FLUSHes. Requests in flight never overlap
 * each other (a range lock), so requests that overlap are ordered by their replies and the final
 * content does not depend on the server's scheduling: applying each request to the model when
 * its reply arrives gives exactly what the device must hold.
 *
 * Snapshots are taken while the workload runs. `beginCut()` (just before snapshot.create is
 * sent) copies the model: every request answered by then is in the snapshot. Requests in flight
 * then, or sent before the create returns (`endCut()`), are *ambiguous*: each is wholly in or
 * wholly out of the snapshot. While a cut is open they stay locked even once answered, so they
 * never overlap one another, and `resolveCut()` can decide each from the snapshot's content
 * alone. It also checks that the result is one point in time: a request answered before another
 * was sent cannot be out of the snapshot when the later one is in.
 *
 * All times are a logical clock (a counter bumped at each send and each reply), never wall time.
 */
import type { NbdClient } from '../../src/client/nbd-client.ts';
import { CommandFlag } from '../../src/nbd-protocol/index.ts';
import { rng } from './random.ts';
import { diffImages, SECTOR, stampedData } from './stamps.ts';

export type OpKind = 'write' | 'trim' | 'zero';

export interface Op {
  /** Sequence number, stamped into the data written. */
  seq: number;
  kind: OpKind;
  offset: number;
  length: number;
  flags: number;
  data: Buffer | undefined;
  issued: number;
  acked: number | undefined;
  state: 'inflight' | 'done' | 'failed';
}

export interface Cut {
  t0: number;
  t1: number | undefined;
  /** The model at t0. */
  base: Buffer;
  /** In flight at t0 or sent before t1. */
  ambiguous: Op[];
}

export interface WorkloadOptions {
  size: number;
  chunkSize: number;
  clients: NbdClient[];
  depth: number;
  seed: number;
  /** The device content now. */
  model: Buffer;
  /** First stamp sequence number (keep them unique across runs on one image). */
  firstSeq: number;
  /** TRIM leaves zeroes (the file backend punches holes); otherwise it changes nothing. */
  trimZeroes: boolean;
  /** Hard bound on requests sent. */
  maxOps?: number;
}

export { rng };

const overlaps = (a: { offset: number; length: number }, o: number, l: number) =>
  a.offset < o + l && o < a.offset + a.length;

export class Workload {
  readonly model: Buffer;
  readonly ops: Op[] = [];
  readonly flushes: { issued: number; acked: number | undefined }[] = [];
  readonly errors: string[] = [];
  completed = 0;
  private clock = 0;
  private seq: number;
  private readonly opts: WorkloadOptions;
  private readonly random: () => number;
  private readonly inflight = new Set<Op>();
  private window: Op[] | undefined;
  private stopping = false;
  private dying = false;
  private workers: Promise<void>[] = [];
  private wake: (() => void)[] = [];

  constructor(opts: WorkloadOptions) {
    this.opts = opts;
    this.model = opts.model;
    this.seq = opts.firstSeq;
    this.random = rng(opts.seed);
  }

  /** The next stamp sequence number free for other writers of the same image. */
  get nextSeq(): number {
    return this.seq;
  }

  start(): void {
    for (const c of this.opts.clients) {
      for (let i = 0; i < this.opts.depth; i++) this.workers.push(this.worker(c));
    }
  }

  /** Stop sending, wait for every reply; throws if any request failed. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.signal();
    await Promise.all(this.workers);
    if (this.errors.length > 0) throw new Error(`origin requests failed:\n${this.errors.slice(0, 5).join('\n')}`);
  }

  /** The server is about to be killed: failures from now on are expected (requests keep going). */
  expectDeath(): void {
    this.dying = true;
  }

  /** Stop sending after the server was killed; resolves once every request has failed or been answered. */
  abandon(): Promise<void> {
    this.dying = true;
    this.stopping = true;
    this.signal();
    return Promise.all(this.workers).then(() => undefined);
  }

  /** Resolves once `n` more requests have been answered (or the workload stopped). */
  async waitCompleted(n: number): Promise<void> {
    const target = this.completed + n;
    while (this.completed < target && !this.stopping) await this.changed();
    if (this.errors.length > 0) throw new Error(`origin requests failed:\n${this.errors.slice(0, 5).join('\n')}`);
  }

  beginCut(): Cut {
    const cut: Cut = { t0: ++this.clock, t1: undefined, base: Buffer.from(this.model), ambiguous: [...this.inflight] };
    this.window = cut.ambiguous;
    return cut;
  }

  endCut(cut: Cut): void {
    cut.t1 = ++this.clock;
    this.window = undefined;
    this.signal();
  }

  /**
   * The exact content a snapshot taken at `cut` must have, given its `image` as read back: each
   * ambiguous request is decided from the image; throws when a request is neither wholly in nor
   * wholly out, or when the decisions are not one point in time.
   */
  resolveCut(cut: Cut, image: Buffer): { model: Buffer; included: number; excluded: number } {
    const model = Buffer.from(cut.base);
    const inn: Op[] = [];
    const out: Op[] = [];
    for (const op of [...cut.ambiguous].sort((a, b) => a.issued - b.issued)) {
      const end = op.offset + op.length;
      const withOp = this.contentOf(op, model);
      const got = image.subarray(op.offset, end);
      const without = model.subarray(op.offset, end);
      if (withOp.equals(without)) continue; // no difference either way
      if (got.equals(withOp)) {
        inn.push(op);
        withOp.copy(model, op.offset);
      } else if (got.equals(without)) {
        out.push(op);
      } else {
        const d = diffImages(got, withOp, op.offset);
        throw new Error(
          `snapshot holds neither all nor none of ${describe(op)}: vs with it: ${d}; vs without: ${diffImages(got, without, op.offset)}`,
        );
      }
    }
    for (const a of out) {
      for (const b of inn) {
        if (a.acked !== undefined && a.acked < b.issued) {
          throw new Error(
            `not one point in time: ${describe(b)} is in the snapshot but ${describe(a)}, answered before it was sent, is not`,
          );
        }
      }
    }
    return { model, included: inn.length, excluded: out.length };
  }

  /**
   * Requests whose data must be on the origin after a crash: answered with FUA, or answered
   * before a FLUSH that was itself answered. For each, the bytes no later request touched
   * (answered or not) must hold its data. Returns the failures.
   */
  durabilityFailures(origin: Buffer): string[] {
    const failures: string[] = [];
    let checked = 0;
    for (const d of this.ops) {
      if (d.state !== 'done' || d.acked === undefined) continue;
      const acked = d.acked;
      const durable =
        (d.flags & CommandFlag.FUA) !== 0 || this.flushes.some((f) => f.acked !== undefined && f.issued > acked);
      if (!durable) continue;
      checked++;
      let pieces: [number, number][] = [[d.offset, d.offset + d.length]];
      for (const x of this.ops) {
        if (x.issued <= acked || !overlaps(x, d.offset, d.length)) continue;
        pieces = pieces.flatMap(([s, e]) => {
          const xs = x.offset;
          const xe = x.offset + x.length;
          if (xe <= s || xs >= e) return [[s, e]];
          const keep: [number, number][] = [];
          if (xs > s) keep.push([s, xs]);
          if (xe < e) keep.push([xe, e]);
          return keep;
        });
      }
      const want = this.contentOf(d, undefined);
      for (const [s, e] of pieces) {
        const diff = diffImages(origin.subarray(s, e), want.subarray(s - d.offset, e - d.offset), s);
        if (diff !== undefined) failures.push(`${describe(d)} lost after the crash: ${diff}`);
      }
    }
    if (checked === 0) failures.push('no durable request to check (the workload sent no FUA write or FLUSH)');
    return failures;
  }

  stats(): Record<string, number> {
    const s: Record<string, number> = { flush: this.flushes.length };
    for (const op of this.ops) s[op.kind] = (s[op.kind] ?? 0) + 1;
    s.fua = this.ops.filter((o) => (o.flags & CommandFlag.FUA) !== 0).length;
    s.unaligned = this.ops.filter((o) => o.offset % SECTOR !== 0 || o.length % SECTOR !== 0).length;
    s.spanning = this.ops.filter(
      (o) => Math.floor(o.offset / this.opts.chunkSize) !== Math.floor((o.offset + o.length - 1) / this.opts.chunkSize),
    ).length;
    s.lastChunk = this.ops.filter(
      (o) => o.offset + o.length > Math.floor((this.opts.size - 1) / this.opts.chunkSize) * this.opts.chunkSize,
    ).length;
    return s;
  }

  /** The bytes `op` leaves at its range (given the content before it, for a TRIM that keeps it). */
  private contentOf(op: Op, before: Buffer | undefined): Buffer {
    if (op.kind === 'write') return op.data as Buffer;
    if (op.kind === 'trim' && !this.opts.trimZeroes) {
      return Buffer.from((before ?? this.model).subarray(op.offset, op.offset + op.length));
    }
    return Buffer.alloc(op.length);
  }

  private signal(): void {
    const w = this.wake;
    this.wake = [];
    for (const f of w) f();
  }

  private changed(): Promise<void> {
    return new Promise((resolve) => {
      this.wake.push(resolve);
      setTimeout(resolve, 5);
    });
  }

  private async worker(c: NbdClient): Promise<void> {
    const max = this.opts.maxOps ?? 100_000;
    while (!this.stopping && this.ops.length < max) {
      if (this.random() < 0.02) {
        await this.flush(c);
        continue;
      }
      const op = this.next();
      if (op === undefined) await this.changed();
      else await this.run(c, op);
    }
  }

  private async flush(c: NbdClient): Promise<void> {
    const f = { issued: ++this.clock, acked: undefined as number | undefined };
    this.flushes.push(f);
    try {
      await c.flush();
      f.acked = ++this.clock;
    } catch (err) {
      if (!this.dying) this.fail(`FLUSH: ${String(err)}`);
    }
  }

  private fail(msg: string): void {
    this.errors.push(msg);
    this.stopping = true;
    this.signal();
  }

  private async run(c: NbdClient, op: Op): Promise<void> {
    op.issued = ++this.clock;
    this.ops.push(op);
    this.inflight.add(op);
    this.window?.push(op);
    try {
      if (op.kind === 'write') await c.write(op.offset, op.data as Buffer, op.flags);
      else if (op.kind === 'trim') await c.trim(op.offset, op.length, op.flags);
      else await c.writeZeroes(op.offset, op.length, op.flags);
      op.acked = ++this.clock;
      op.state = 'done';
      this.contentOf(op, undefined).copy(this.model, op.offset);
      this.completed++;
    } catch (err) {
      op.state = 'failed';
      if (!this.dying) this.fail(`${describe(op)}: ${String(err)}`);
    } finally {
      this.inflight.delete(op);
      this.signal();
    }
  }

  /** A random request whose range is free, or undefined after a few tries. */
  private next(): Op | undefined {
    for (let attempt = 0; attempt < 8; attempt++) {
      const { kind, offset, length, flags } = this.candidate();
      if ([...this.inflight].some((o) => overlaps(o, offset, length))) continue;
      if (this.window?.some((o) => overlaps(o, offset, length))) continue;
      const seq = this.seq++;
      const data = kind === 'write' ? stampedData(seq, offset, length) : undefined;
      return { seq, kind, offset, length, flags, data, issued: 0, acked: undefined, state: 'inflight' };
    }
    return undefined;
  }

  private int(n: number): number {
    return Math.floor(this.random() * n);
  }

  private candidate(): { kind: OpKind; offset: number; length: number; flags: number } {
    const { size, chunkSize: cs } = this.opts;
    const chunks = Math.ceil(size / cs);
    const lastStart = (chunks - 1) * cs;
    const r = this.random();
    const fua = this.random() < 0.1 ? CommandFlag.FUA : 0;
    const aligned = (length: number) => {
      const len = Math.min(length, size - (size % SECTOR));
      return { offset: this.int(Math.floor((size - len) / SECTOR) + 1) * SECTOR, length: len };
    };
    const anywhere = (max: number) => {
      const len = 1 + this.int(Math.min(max, size));
      return { offset: this.int(size - len + 1), length: len };
    };
    if (r < 0.3) {
      const sizes = [512, 4096, 8192, 16384, 65536, 131072, 3 * cs];
      return { kind: 'write', ...aligned(sizes[this.int(sizes.length)] as number), flags: fua };
    }
    if (r < 0.45) return { kind: 'write', ...anywhere(Math.min(3 * cs, 200_000)), flags: fua };
    if (r < 0.6) {
      // across a chunk boundary: up to 8 KiB either side, at any byte
      const boundary = (1 + this.int(chunks - 1)) * cs;
      const before = 1 + this.int(Math.min(cs, 8192));
      const after = 1 + this.int(Math.min(cs, 8192, size - boundary));
      return { kind: 'write', offset: boundary - before, length: before + after, flags: fua };
    }
    if (r < 0.68) {
      // in, or into, the short last chunk; often up to the very last byte
      const offset = Math.max(0, lastStart - cs) + this.int(size - Math.max(0, lastStart - cs));
      const length = this.random() < 0.5 ? size - offset : 1 + this.int(size - offset);
      return { kind: 'write', offset, length, flags: fua };
    }
    if (r < 0.72) {
      // many chunks at once (copies run in parallel)
      return { kind: 'write', ...aligned(Math.min(2 << 20, (8 + this.int(40)) * cs) - SECTOR * this.int(4)), flags: 0 };
    }
    if (r < 0.82) {
      const range = this.random() < 0.5 ? aligned((1 + this.int(8)) * 4096) : anywhere(3 * cs);
      return { kind: 'trim', ...range, flags: fua };
    }
    const range = this.random() < 0.5 ? aligned((1 + this.int(8)) * 4096) : anywhere(3 * cs);
    return { kind: 'zero', ...range, flags: fua | (this.random() < 0.5 ? CommandFlag.NO_HOLE : 0) };
  }
}

export function describe(op: Op): string {
  return `op ${op.seq} (${op.kind} [${op.offset}, +${op.length}) flags ${op.flags}, ${op.state})`;
}
