/**
 * Shared pieces of the backup tests: a `BackupRig` serving a file image (with a difference store
 * and a control socket) beside an in-memory model of it: every write, zero and trim goes to both,
 * the model remembers each snapshot's bytes and which tracking blocks changed in each era, so
 * backups, restores and `qemu:dirty-bitmap` maps can be checked against it byte for byte.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { native } from '../../src/block/native.ts';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { call } from '../../src/control/client.ts';
import { CommandFlag } from '../../src/nbd-protocol/index.ts';
import { type RunResult, run } from '../helpers/clients.ts';
import { rng } from '../helpers/random.ts';
import { CLI, freshPort, type RunningServer, startServer } from '../helpers/server.ts';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const BLOCK = 64 * KiB;

/** The file backend punches holes for TRIM only with the native helper; otherwise trims are skipped. */
export const CAN_TRIM = native !== undefined;

/** The seeded generator of the tests (mulberry32, test/helpers/random.ts). */
export const prng = rng;

/** `n` pseudo-random bytes from `rnd`. */
export function randomBuffer(rnd: () => number, n: number): Buffer {
  const words = new Uint32Array(Math.ceil(n / 4));
  for (let i = 0; i < words.length; i++) words[i] = Math.floor(rnd() * 4294967296);
  return Buffer.from(words.buffer, 0, n);
}

export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
export const fileSha = (path: string): string => sha(readFileSync(path));

/** `nbdsnap ARGS...` as a child process. */
export function nbdsnap(args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], { timeoutMs });
}

export interface RigOptions {
  size: number;
  /** Initial image content (default: zeroes, sparse). */
  content?: Buffer;
  /** Other images served beside `disk`: name -> size (sparse files, e.g. restore targets). */
  extra?: Record<string, number>;
}

export class BackupRig {
  readonly dir: string;
  readonly control: string;
  readonly port = freshPort();
  readonly size: number;
  model: Buffer;
  server: RunningServer | undefined;
  readonly snaps = new Map<string, Buffer>();
  /** Snapshot names in the order taken, each with the blocks changed since the one before. */
  readonly eras: { name: string; blocks: Set<number> }[] = [];
  private touched = new Set<number>();
  private readonly args: string[];
  private origin: NbdClient | undefined;

  constructor(dir: string, opts: RigOptions) {
    this.dir = dir;
    this.size = opts.size;
    this.control = join(dir, 'ctl.sock');
    const image = join(dir, 'disk.img');
    if (opts.content === undefined) sparse(image, opts.size);
    else writeFileSync(image, opts.content);
    this.model = opts.content === undefined ? Buffer.alloc(opts.size) : Buffer.from(opts.content);
    sparse(join(dir, 'store.img'), 4 * opts.size);
    const extra = Object.entries(opts.extra ?? {}).map(([name, size]) => {
      sparse(join(dir, `${name}.img`), size);
      return `${name}=${join(dir, `${name}.img`)}`;
    });
    this.args = [`disk=${image}`, ...extra, '--store', join(dir, 'store.img'), '--control', this.control];
  }

  async start(): Promise<void> {
    this.server = await startServer(this.args, { port: this.port });
  }

  /** Stop the server (SIGKILL: a crash); the origin connection goes with it. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const o = this.origin;
    this.origin = undefined;
    const s = this.server;
    this.server = undefined;
    await s?.stop(signal);
    await o?.close().catch(() => undefined);
  }

  uri(name = 'disk'): string {
    return `nbd://127.0.0.1:${this.port}/${encodeURIComponent(name)}`;
  }

  async disk(): Promise<NbdClient> {
    this.origin ??= await NbdClient.open(this.uri('disk'));
    return this.origin;
  }

  private touch(offset: number, length: number): void {
    for (let b = Math.floor(offset / BLOCK); b <= Math.floor((offset + length - 1) / BLOCK); b++) this.touched.add(b);
  }

  /** Write with FUA: acknowledged means durable. */
  async write(offset: number, data: Buffer): Promise<void> {
    await (await this.disk()).write(offset, data, CommandFlag.FUA);
    data.copy(this.model, offset);
    this.touch(offset, data.length);
  }

  async zero(offset: number, length: number): Promise<void> {
    await (await this.disk()).writeZeroes(offset, length, CommandFlag.FUA);
    this.model.fill(0, offset, offset + length);
    this.touch(offset, length);
  }

  /** TRIM (the file backend punches a hole, so the range reads as zeroes); zeroes without the helper. */
  async trim(offset: number, length: number): Promise<void> {
    if (!CAN_TRIM) return this.zero(offset, length);
    await (await this.disk()).trim(offset, length, CommandFlag.FUA);
    this.model.fill(0, offset, offset + length);
    this.touch(offset, length);
  }

  async snapshot(name: string): Promise<void> {
    await call(this.control, 'snapshot.create', { devices: ['disk'], name, writable: false });
    this.snaps.set(name, Buffer.from(this.model));
    this.eras.push({ name, blocks: this.touched });
    this.touched = new Set();
  }

  deleteSnapshot(name: string): Promise<unknown> {
    return call(this.control, 'snapshot.delete', { device: 'disk', name });
  }

  snap(name: string): Buffer {
    const s = this.snaps.get(name);
    if (s === undefined) throw new Error(`no snapshot ${name} in the model`);
    return s;
  }

  /** Tracking blocks changed after snapshot `from` up to snapshot `to`, by the model. */
  changedBlocks(from: string, to: string): Set<number> {
    const names = this.eras.map((e) => e.name);
    const out = new Set<number>();
    for (const e of this.eras.slice(names.indexOf(from) + 1, names.indexOf(to) + 1))
      for (const b of e.blocks) out.add(b);
    return out;
  }

  /** Every byte of an export. */
  async readAll(name: string): Promise<Buffer> {
    const c = await NbdClient.open(this.uri(name));
    try {
      const parts: Promise<Buffer>[] = [];
      for (let at = 0; at < c.size; at += 4 * MiB) parts.push(c.read(at, Math.min(4 * MiB, c.size - at)));
      return Buffer.concat(await Promise.all(parts));
    } finally {
      await c.close();
    }
  }
}

export function sparse(path: string, size: number): void {
  writeFileSync(path, '');
  truncateSync(path, size);
}

/** `nbdinfo --map=CONTEXT URI --json` as extents. */
export function nbdinfoMap(context: string, uri: string): { offset: number; length: number; type: number }[] {
  const r = spawnSync('nbdinfo', ['--json', `--map=${context}`, uri], {
    env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` },
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status !== 0) throw new Error(`nbdinfo failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as { offset: number; length: number; type: number }[];
}

/** The blocks an nbdinfo dirty-bitmap map calls dirty (type bit 0), checking block alignment. */
export function dirtyBlocksOf(map: { offset: number; length: number; type: number }[], size: number): Set<number> {
  const out = new Set<number>();
  let expect = 0;
  for (const e of map) {
    if (e.offset !== expect) throw new Error(`map is not contiguous at ${e.offset}`);
    expect = e.offset + e.length;
    if ((e.type & 1) === 0) continue;
    if (e.offset % BLOCK !== 0 || (e.length % BLOCK !== 0 && expect !== size))
      throw new Error(`dirty extent [${e.offset}, +${e.length}) is not block-aligned`);
    for (let b = e.offset / BLOCK; b * BLOCK < expect; b++) out.add(b);
  }
  if (expect !== size) throw new Error(`map covers ${expect} of ${size} bytes`);
  return out;
}

/** A byte-level description of where two buffers first differ (or undefined if equal). */
export function firstDiff(a: Buffer, b: Buffer): string | undefined {
  if (a.equals(b)) return undefined;
  if (a.length !== b.length) return `sizes differ: ${a.length} vs ${b.length}`;
  for (let i = 0; i < a.length; i += 512) {
    if (!a.subarray(i, i + 512).equals(b.subarray(i, i + 512))) {
      let n = 0;
      for (let j = i; j < a.length; j += 512) if (!a.subarray(j, j + 512).equals(b.subarray(j, j + 512))) n++;
      return `first differing sector at byte ${i} (block ${Math.floor(i / BLOCK)}), ${n} sectors differ`;
    }
  }
  return 'differ';
}

export const sorted = (s: Set<number>): number[] => [...s].sort((x, y) => x - y);
