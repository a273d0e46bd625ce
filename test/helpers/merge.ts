/**
 * Pieces of the merge tests: merge control calls, waiting for a merge to end, filling the origin
 * with changes a snapshot then has to roll back, and `ModelWriters`, a set of concurrent NBD
 * writers and readers with an exact model of the device.
 *
 * ModelWriters: every connection keeps `depth` requests in flight: stamped writes (aligned,
 * unaligned, across chunk boundaries, over many chunks, some FUA), WRITE_ZEROES, TRIMs and
 * reads. No two requests in flight overlap (a range lock covers reads too), so each write is
 * applied to the model when its reply arrives, and a read must return exactly the model of its
 * range at that time (no write to the range can be answered while it is in flight).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { MergeInfo } from '../../src/cli/control-commands.ts';
import type { NbdClient } from '../../src/client/nbd-client.ts';
import { CommandFlag } from '../../src/nbd-protocol/index.ts';
import type { Rig } from './snapshots.ts';
import { diffImages, SECTOR, stampedData } from './stamps.ts';
import { rng } from './workload.ts';

/** What the server reports of a merge (the CLI's view of it). */
export type MergeProgress = MergeInfo;

export const mergeStatus = (rig: Rig): Promise<MergeProgress[]> => rig.ctl<MergeProgress[]>('merge.status');

export function startMerge(rig: Rig, device: string, name: string, onNextStart = false): Promise<MergeProgress> {
  return rig.ctl<MergeProgress>('merge.start', { device, name, onNextStart });
}

/** Polls `merge.status` until `label` (DEV@SNAP) is gone; throws if it fails or never ends. */
export async function waitMergeDone(rig: Rig, label: string, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = (await mergeStatus(rig)).find((x) => x.snapshot === label);
    if (p === undefined) return;
    if (p.state === 'failed') throw new Error(`merge of ${label} failed: ${JSON.stringify(p)}`);
    if (Date.now() > deadline) throw new Error(`merge of ${label} still running: ${JSON.stringify(p)}`);
    await sleep(20);
  }
}

/**
 * Rewrite about `fraction` of the device with stamped data, in runs of 1-12 chunks that often
 * start and end inside a chunk, 8 requests in flight, then FLUSH; applied to `model`.
 * Returns the next free stamp sequence number.
 */
export async function changeChunks(
  c: NbdClient,
  model: Buffer,
  opts: { chunkSize: number; fraction: number; seed: number; firstSeq: number },
): Promise<number> {
  const random = rng(opts.seed);
  const int = (n: number) => Math.floor(random() * n);
  const size = model.length;
  const chunks = Math.ceil(size / opts.chunkSize);
  let seq = opts.firstSeq;
  const todo: { offset: number; length: number }[] = [];
  for (let ch = 0; ch < chunks; ) {
    const run = 1 + int(12);
    if (random() < opts.fraction) {
      const start = ch * opts.chunkSize + (random() < 0.3 ? int(opts.chunkSize) : 0);
      const end = Math.min(size, (ch + run) * opts.chunkSize - (random() < 0.3 ? int(opts.chunkSize - 1) : 0));
      if (end > start) todo.push({ offset: start, length: end - start });
    }
    ch += run;
  }
  let next = 0;
  const worker = async () => {
    while (next < todo.length) {
      const w = todo[next++] as { offset: number; length: number };
      const data = stampedData(seq++, w.offset, w.length);
      await c.write(w.offset, data);
      data.copy(model, w.offset);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  await c.flush();
  return seq;
}

type Kind = 'write' | 'zero' | 'trim' | 'read';

interface Req {
  kind: Kind;
  offset: number;
  length: number;
  flags: number;
  seq: number;
}

export interface ModelWritersOptions {
  clients: NbdClient[];
  depth: number;
  /** The device content as the writers start (e.g. the snapshot being merged); updated on replies. */
  model: Buffer;
  chunkSize: number;
  seed: number;
  firstSeq: number;
  /** TRIM reads back as zeroes afterwards (file backend with hole punching). */
  trimZeroes: boolean;
}

export class ModelWriters {
  readonly model: Buffer;
  readonly errors: string[] = [];
  /** Reads that did not return the model of their range. */
  readonly mismatches: string[] = [];
  readonly counts: Record<string, number> = {};
  private readonly opts: ModelWritersOptions;
  private readonly random: () => number;
  private readonly inflight = new Set<Req>();
  private seq: number;
  private stopping = false;
  private workers: Promise<void>[] = [];

  constructor(opts: ModelWritersOptions) {
    this.opts = opts;
    this.model = opts.model;
    this.seq = opts.firstSeq;
    this.random = rng(opts.seed);
  }

  get nextSeq(): number {
    return this.seq;
  }

  get done(): number {
    return Object.values(this.counts).reduce((a, b) => a + b, 0);
  }

  start(): void {
    for (const c of this.opts.clients) for (let i = 0; i < this.opts.depth; i++) this.workers.push(this.worker(c));
  }

  /** Stop sending and wait for every reply. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.workers);
  }

  /** Resolves once `n` more requests have been answered (or a request failed). */
  async waitDone(n: number): Promise<void> {
    const target = this.done + n;
    while (this.done < target && this.errors.length === 0) await sleep(5);
  }

  private async worker(c: NbdClient): Promise<void> {
    while (!this.stopping && this.errors.length === 0) {
      const r = this.next();
      if (r === undefined) {
        await sleep(1);
        continue;
      }
      this.inflight.add(r);
      try {
        await this.send(c, r);
        this.counts[r.kind] = (this.counts[r.kind] ?? 0) + 1;
      } catch (err) {
        this.errors.push(`${r.kind} [${r.offset}, +${r.length}): ${String(err)}`);
      } finally {
        this.inflight.delete(r);
      }
    }
  }

  private async send(c: NbdClient, r: Req): Promise<void> {
    const { offset, length } = r;
    if (r.kind === 'read') {
      const got = await c.read(offset, length);
      const d = diffImages(got, this.model.subarray(offset, offset + length), offset);
      if (d !== undefined) this.mismatches.push(`read [${offset}, +${length}): ${d}`);
      return;
    }
    if (r.kind === 'write') {
      const data = stampedData(r.seq, offset, length);
      await c.write(offset, data, r.flags);
      data.copy(this.model, offset);
    } else if (r.kind === 'zero') {
      await c.writeZeroes(offset, length, r.flags);
      this.model.fill(0, offset, offset + length);
    } else {
      await c.trim(offset, length, r.flags);
      if (this.opts.trimZeroes) this.model.fill(0, offset, offset + length);
    }
  }

  private next(): Req | undefined {
    for (let attempt = 0; attempt < 8; attempt++) {
      const r = this.candidate();
      if ([...this.inflight].some((o) => o.offset < r.offset + r.length && r.offset < o.offset + o.length)) continue;
      if (r.kind === 'write') r.seq = this.seq++;
      return r;
    }
    return undefined;
  }

  private int(n: number): number {
    return Math.floor(this.random() * n);
  }

  private candidate(): Req {
    const size = this.model.length;
    const cs = this.opts.chunkSize;
    const chunks = Math.ceil(size / cs);
    const flags = this.random() < 0.1 ? CommandFlag.FUA : 0;
    const req = (kind: Kind, offset: number, length: number): Req => ({ kind, offset, length, flags, seq: 0 });
    const aligned = (length: number) => this.int(Math.floor((size - length) / SECTOR) + 1) * SECTOR;
    const anywhere = (max: number) => {
      const length = 1 + this.int(Math.min(max, size));
      return { offset: this.int(size - length + 1), length };
    };
    const r = this.random();
    if (r < 0.25) {
      const sizes = [512, 4096, 8192, cs, 3 * cs, 65536];
      const length = sizes[this.int(sizes.length)] as number;
      return req('write', aligned(length), length);
    }
    if (r < 0.4) {
      const a = anywhere(3 * cs);
      return req('write', a.offset, a.length);
    }
    if (r < 0.55) {
      const boundary = (1 + this.int(chunks - 1)) * cs;
      const before = 1 + this.int(Math.min(cs, 8192));
      const after = 1 + this.int(Math.min(cs, 8192, size - boundary));
      return req('write', boundary - before, before + after);
    }
    if (r < 0.6) {
      const length = Math.min(1 << 20, (4 + this.int(28)) * cs) - this.int(3) * 777;
      return req('write', this.int(size - length + 1), length);
    }
    if (r < 0.66) {
      const a = anywhere(2 * cs);
      return req('zero', a.offset, a.length);
    }
    if (r < 0.7) {
      const length = (1 + this.int(4)) * 4096;
      return req('trim', aligned(length), length);
    }
    const a = this.random() < 0.2 ? anywhere(1 << 20) : anywhere(3 * cs);
    return { ...req('read', a.offset, a.length), flags: 0 };
  }
}
