/**
 * A model of a device written by concurrent clients, exact enough to judge a snapshot taken while
 * writes go on, and a device whose server failed some writes.
 *
 * Every write is sector-aligned and stamped (test/helpers/stamps.ts: each sector names the write
 * that put it there and its own number), so a read tells, sector by sector, which write it
 * holds. The model keeps, per sector, the writes to it in the order they were sent, with a logical
 * clock at send and at reply (JavaScript runs one callback at a time, so the clock orders them).
 * No two requests in flight overlap (a range lock), so the writes to one sector never overlap in
 * time: each was sent after the previous one's reply.
 *
 * What a sector may hold at a point taken somewhere in [t0, t1] (a snapshot's create call, or one
 * read): the last write to it answered OK before t0 (or the initial fill), or any later write sent
 * before t1: those were in flight across the point, or failed (a failed write may or may not have
 * landed, but never after a later write that succeeded).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { NbdClient } from '../../src/client/nbd-client.ts';
import { CommandFlag } from '../../src/nbd-protocol/index.ts';
import { SECTOR, stampedData } from '../helpers/stamps.ts';
import { rng } from '../helpers/workload.ts';

export interface WriteRecord {
  seq: number;
  sector: number;
  sectors: number;
  sent: number;
  /** Clock at the reply; Infinity while in flight. */
  done: number;
  ok: boolean;
}

export class History {
  readonly size: number;
  private clock = 0;
  /** Per sector, the indexes (into `writes`) of the writes to it, in send order. */
  private readonly perSector: number[][];
  readonly writes: WriteRecord[] = [];
  /** The write each sector holds before any recorded write. */
  private readonly initial: Uint32Array;

  /** `initial`: the device's content before the first recorded write (stamped), or one stamp for all. */
  constructor(size: number, initial: Buffer | number = 0) {
    this.size = size;
    this.perSector = Array.from({ length: size / SECTOR }, () => []);
    this.initial = new Uint32Array(size / SECTOR);
    if (typeof initial === 'number') this.initial.fill(initial);
    else for (let s = 0; s < this.initial.length; s++) this.initial[s] = initial.readUInt32LE(s * SECTOR + 4);
  }

  tick(): number {
    this.clock += 1;
    return this.clock;
  }

  /** Record a write being sent now; returns its record, to be passed to `answered`. */
  sent(seq: number, offset: number, length: number): WriteRecord {
    const rec: WriteRecord = {
      seq,
      sector: offset / SECTOR,
      sectors: length / SECTOR,
      sent: this.tick(),
      done: Infinity,
      ok: false,
    };
    const index = this.writes.push(rec) - 1;
    for (let s = rec.sector; s < rec.sector + rec.sectors; s++) (this.perSector[s] as number[]).push(index);
    return rec;
  }

  answered(rec: WriteRecord, ok: boolean): void {
    rec.done = this.tick();
    rec.ok = ok;
  }

  /** The write sequence numbers sector `s` may hold at a point inside [t0, t1]. */
  allowed(s: number, t0: number, t1: number): number[] {
    const list = this.perSector[s] as number[];
    let base = -1;
    for (let i = list.length - 1; i >= 0; i--) {
      const w = this.writes[list[i] as number] as WriteRecord;
      if (w.ok && w.done < t0) {
        base = i;
        break;
      }
    }
    const out = [base < 0 ? (this.initial[s] as number) : (this.writes[list[base] as number] as WriteRecord).seq];
    for (let i = base + 1; i < list.length; i++) {
      const w = this.writes[list[i] as number] as WriteRecord;
      if (w.sent < t1) out.push(w.seq);
    }
    return out;
  }

  /**
   * Check `data` (the bytes at `offset`, sector-aligned) against the point [t0, t1]: every sector
   * must be intact, in place, and hold an allowed write. Returns the first problems (empty: exact).
   */
  judge(data: Buffer, offset: number, t0: number, t1: number, max = 5): string[] {
    const problems: string[] = [];
    const first = offset / SECTOR;
    for (let i = 0; i * SECTOR < data.length && problems.length < max; i++) {
      const s = first + i;
      const got = data.subarray(i * SECTOR, (i + 1) * SECTOR);
      const allowed = this.allowed(s, t0, t1);
      const seq = got.readUInt32LE(4);
      if (!allowed.includes(seq) || !got.equals(stampedData(seq, s * SECTOR, SECTOR))) {
        problems.push(`sector ${s}: holds ${describe(got, s)}; allowed writes ${allowed.slice(-6).join(', ')}`);
      }
    }
    return problems;
  }

  /** Writes whose reply was an error. */
  failed(): WriteRecord[] {
    return this.writes.filter((w) => !w.ok && w.done !== Infinity);
  }
}

function describe(sector: Buffer, s: number): string {
  if (sector.every((b) => b === 0)) return 'zeroes';
  const seq = sector.readUInt32LE(4);
  const at = sector.readUInt32LE(8);
  const intact = sector.equals(stampedData(seq, at * SECTOR, SECTOR));
  return `write ${seq} for sector ${at}${at === s ? '' : ' (MISPLACED)'}${intact ? '' : ' (torn or not a stamp)'}`;
}

export interface WritersOptions {
  clients: NbdClient[];
  /** Requests in flight per client. */
  depth: number;
  seed: number;
  /** First write sequence number (above the initial fill's). */
  firstSeq: number;
  /** Share of writes sent with FUA (1: all). */
  fua?: number;
  /** Share of requests that are reads, checked against the history. */
  reads?: number;
  /** Largest write in bytes (default 1 MiB). */
  maxWrite?: number;
}

/**
 * Concurrent stamped writes (and checked reads) through `clients`, recorded in `history`. A
 * failed request is recorded, not thrown: `errors` lists them, `mismatches` the reads that were
 * not allowed by the history.
 */
export class Writers {
  readonly errors: string[] = [];
  readonly mismatches: string[] = [];
  ops = 0;
  private readonly busy: { start: number; end: number }[] = [];
  private seq: number;
  private stopping = false;
  private running: Promise<void>[] = [];
  private readonly random: () => number;

  readonly history: History;
  private readonly opts: WritersOptions;

  constructor(history: History, opts: WritersOptions) {
    this.history = history;
    this.opts = opts;
    this.seq = opts.firstSeq;
    this.random = rng(opts.seed);
  }

  get nextSeq(): number {
    return this.seq;
  }

  start(): void {
    this.stopping = false;
    for (const c of this.opts.clients) for (let i = 0; i < this.opts.depth; i++) this.running.push(this.loop(c));
  }

  /** Stop sending and wait for every reply. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.running);
    this.running = [];
  }

  /** Resolves once `n` more requests were answered (or the writers stopped). */
  async waitOps(n: number, timeoutMs = 60_000): Promise<void> {
    const target = this.ops + n;
    const deadline = Date.now() + timeoutMs;
    while (this.ops < target && !this.stopping) {
      if (Date.now() > deadline)
        throw new Error(`writers did only ${this.ops - target + n} of ${n} requests in ${timeoutMs} ms`);
      await sleep(5);
    }
  }

  private int(n: number): number {
    return Math.floor(this.random() * n);
  }

  private pick(): { kind: 'write' | 'read'; start: number; end: number } | undefined {
    const sectors = this.history.size / SECTOR;
    const max = (this.opts.maxWrite ?? 1 << 20) / SECTOR;
    const sizes = [1, 8, 16, 128, 129, 384, max].filter((n) => n <= max);
    const n = sizes[this.int(sizes.length)] as number;
    const start = this.int(sectors - n + 1);
    const end = start + n;
    if (this.busy.some((b) => b.start < end && start < b.end)) return undefined;
    return { kind: this.random() < (this.opts.reads ?? 0) ? 'read' : 'write', start, end };
  }

  private async loop(c: NbdClient): Promise<void> {
    while (!this.stopping) {
      const r = this.pick();
      if (r === undefined) {
        await sleep(1);
        continue;
      }
      this.busy.push(r);
      const offset = r.start * SECTOR;
      const length = (r.end - r.start) * SECTOR;
      try {
        if (r.kind === 'read') {
          const t0 = this.history.tick();
          try {
            const got = await c.read(offset, length);
            const bad = this.history.judge(got, offset, t0, t0, 2);
            if (bad.length > 0) this.mismatches.push(`read [${offset}, +${length}): ${bad.join('; ')}`);
          } catch (err) {
            this.errors.push(`read [${offset}, +${length}): ${String(err)}`);
          }
        } else {
          const seq = this.seq++;
          const flags = this.random() < (this.opts.fua ?? 0.1) ? CommandFlag.FUA : 0;
          const data = stampedData(seq, offset, length);
          const rec = this.history.sent(seq, offset, length);
          try {
            await c.write(offset, data, flags);
            this.history.answered(rec, true);
          } catch (err) {
            this.history.answered(rec, false);
            this.errors.push(`write ${seq} [${offset}, +${length}): ${String(err)}`);
          }
        }
        this.ops += 1;
      } finally {
        this.busy.splice(this.busy.indexOf(r), 1);
      }
      // a failing server must not be hammered: a short pause after an error
      if (this.errors.length > 0) await sleep(5);
    }
  }
}
