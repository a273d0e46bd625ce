/**
 * Shared pieces of the snapshot tests: a `Rig` that serves origin images with a difference store
 * and a control socket (and restarts them with the same arguments), control calls, the CLI,
 * whole-export reads and comparisons against a model, and an event watcher (`nbdsnap events`
 * as a child process, killed by its PID).
 */
import { mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../../src/block/native.ts';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { call } from '../../src/control/client.ts';
import { type Background, background, type RunResult, run } from './clients.ts';
import { CLI, freshPort, isPortTaken, type RunningServer, startServer, tempDir } from './server.ts';
import { diffImages, stampedImage } from './stamps.ts';

/** The file backend punches holes for TRIM (native helper built): trimmed bytes read as zeroes. */
export const TRIM_ZEROES = native !== undefined;

export const KiB = 1024;
export const MiB = 1024 * 1024;

export interface RigOptions {
  /** name -> image path */
  devices: Record<string, string>;
  /** --store specs, first one first */
  stores: string[];
  chunkSize?: string;
  transient?: boolean;
  lowSpace?: number;
  extra?: string[];
}

export interface SnapshotInfo {
  device: string;
  name: string;
  export: string;
  state: 'valid' | 'invalid' | 'merging';
  reason?: string;
  writable: boolean;
  chunksInStore: number;
  privateChunks: number;
}

/** One server configuration, started and restarted with exactly the same arguments and port. */
export class Rig {
  readonly control: string;
  readonly args: string[];
  port = freshPort();
  server: RunningServer | undefined;
  private readonly clients = new Set<NbdClient>();

  constructor(dir: string, opts: RigOptions) {
    this.control = join(dir, 'ctl.sock');
    this.args = [
      ...Object.entries(opts.devices).map(([n, p]) => `${n}=${p}`),
      ...opts.stores.flatMap((s) => ['--store', s]),
      '--control',
      this.control,
      ...(opts.chunkSize === undefined ? [] : ['--chunk-size', opts.chunkSize]),
      ...(opts.transient ? ['--transient'] : []),
      ...(opts.lowSpace === undefined ? [] : ['--low-space', String(opts.lowSpace)]),
      ...(opts.extra ?? []),
    ];
  }

  async start(): Promise<RunningServer> {
    for (let attempt = 1; ; attempt++) {
      try {
        this.server = await startServer(this.args, { port: this.port });
        return this.server;
      } catch (err) {
        // The port was taken by another process meanwhile: this rig moves to another one.
        if (attempt >= 5 || !isPortTaken(err)) throw err;
        this.port = freshPort();
      }
    }
  }

  /**
   * Stop and forget the clients of this run. SIGTERM: a graceful stop, clients disconnect first.
   * SIGKILL: a crash; clients are left to see their connection drop (their requests in flight fail
   * then: closing them first would leave those requests unanswered forever).
   */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | string | undefined> {
    const s = this.server;
    this.server = undefined;
    if (signal === 'SIGKILL') this.clients.clear();
    else await this.closeClients();
    return s?.stop(signal);
  }

  async restart(signal: NodeJS.Signals = 'SIGTERM'): Promise<RunningServer> {
    await this.stop(signal);
    return this.start();
  }

  uri(name: string): string {
    return `nbd://127.0.0.1:${this.port}/${encodeURIComponent(name)}`;
  }

  async open(name: string, metaContexts?: string[]): Promise<NbdClient> {
    const c = await NbdClient.open(this.uri(name), metaContexts === undefined ? {} : { metaContexts });
    this.clients.add(c);
    return c;
  }

  async closeClients(): Promise<void> {
    const all = [...this.clients];
    this.clients.clear();
    await Promise.all(all.map((c) => c.close().catch(() => undefined)));
  }

  ctl<T = unknown>(cmd: string, args: Record<string, unknown> = {}): Promise<T> {
    return call(this.control, cmd, args) as Promise<T>;
  }

  async createSnapshot(devices: string | string[], name: string, writable = false): Promise<string[]> {
    return this.ctl<string[]>('snapshot.create', {
      devices: Array.isArray(devices) ? devices : [devices],
      name,
      writable,
    });
  }

  deleteSnapshot(device: string, name: string): Promise<unknown> {
    return this.ctl('snapshot.delete', { device, name });
  }

  list(): Promise<SnapshotInfo[]> {
    return this.ctl<SnapshotInfo[]>('snapshot.list');
  }

  /** `nbdsnap ARGS... --control CTL` to completion. */
  cli(args: string[], opts: { control?: boolean } = {}): Promise<RunResult> {
    return nbdsnap([...args, ...(opts.control === false ? [] : ['--control', this.control])]);
  }

  /** Read a whole export (a fresh connection, pipelined 1 MiB reads). */
  async readAll(name: string): Promise<Buffer> {
    const c = await NbdClient.open(this.uri(name));
    try {
      return await readExport(c);
    } finally {
      await c.close();
    }
  }
}

/** `nbdsnap ARGS...` to completion (20 s at most), outside any rig. */
export function nbdsnap(args: string[], timeoutMs = 20_000): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], { timeoutMs });
}

/** Every byte of the export behind `c`, in pipelined reads of `step` bytes. */
export async function readExport(c: NbdClient, step = MiB, depth = 4): Promise<Buffer> {
  const out = Buffer.alloc(c.size);
  let next = 0;
  const worker = async () => {
    while (next < c.size) {
      const at = next;
      const n = Math.min(step, c.size - at);
      next += n;
      (await c.read(at, n)).copy(out, at);
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
  return out;
}

/** Throws with a stamp-level description when `got` is not `want`. */
export function assertSame(got: Buffer, want: Buffer, what: string): void {
  const d = diffImages(got, want);
  if (d !== undefined) throw new Error(`${what}: ${d}`);
}

/** The error a request got, or 'ok'. */
export async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

/** Create an image file holding `content`. */
export function makeImage(path: string, content: Buffer): string {
  writeFileSync(path, content);
  return path;
}

/** A sparse zero file of `size` bytes. */
export function makeSparse(path: string, size: number): string {
  writeFileSync(path, '');
  truncateSync(path, size);
  return path;
}

/** One device `disk` and one difference store, their files in one folder, and the Rig serving them. */
export interface DiskRig {
  /** The folder of the files (disk.img, store.img, ctl.sock). */
  dir: string;
  /** The image's content when made (seed `seed` stamps): the test's model of the origin. */
  origin: Buffer;
  disk: string;
  store: string;
  rig: Rig;
}

/**
 * A Rig serving `disk=DIR/disk.img`, a stamped image of `size` bytes, with the sparse store
 * DIR/store.img of `storeBytes`; `dir` is made if missing. Not started.
 */
export function diskRig(
  dir: string,
  size: number,
  storeBytes: number,
  opts: Omit<RigOptions, 'devices' | 'stores'> & { seed?: number } = {},
): DiskRig {
  const { seed = 0, ...rigOptions } = opts;
  mkdirSync(dir, { recursive: true });
  const origin = stampedImage(size, seed);
  const disk = makeImage(join(dir, 'disk.img'), origin);
  const store = makeSparse(join(dir, 'store.img'), storeBytes);
  return { dir, origin, disk, store, rig: new Rig(dir, { ...rigOptions, devices: { disk }, stores: [store] }) };
}

export interface EventWatcher {
  events(): Record<string, unknown>[];
  /** Resolves with the first event of `type` (already seen or still to come). */
  waitFor(type: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

/**
 * `nbdsnap events --control CTL` in the background, parsing its JSON lines. The stream has no
 * "subscribed" reply, so readiness is proven with a probe: a throwaway snapshot of `device` is
 * created (and deleted) until its event shows up.
 */
export async function watchEvents(rig: Rig, device: string): Promise<EventWatcher> {
  const bg: Background = background(process.execPath, [CLI, 'events', '--control', rig.control]);
  const parse = () =>
    bg
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  const seen = (name: string) =>
    parse().some((e) => e.type === 'snapshot-created' && (e.snapshots as string[]).includes(`${device}@${name}`));
  for (let i = 0; ; i++) {
    if (i === 100) throw new Error(`nbdsnap events never reported anything: ${bg.output()}`);
    const name = `events-probe-${i}`;
    await rig.createSnapshot(device, name);
    await rig.deleteSnapshot(device, name);
    const until = Date.now() + 300;
    while (!seen(name) && Date.now() < until) await sleep(10);
    if (seen(name)) break;
  }
  return {
    events: () => parse().filter((e) => !JSON.stringify(e).includes('events-probe-')),
    async waitFor(type, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const e = parse().find((x) => x.type === type);
        if (e !== undefined) return e;
        if (Date.now() > deadline) throw new Error(`no "${type}" event; got ${bg.output()}`);
        await sleep(20);
      }
    },
    async stop() {
      bg.kill('SIGTERM');
      await bg.exited;
    },
  };
}

export { tempDir };
