/**
 * Pieces of the damage, fault and misuse tests, which judge nbdsnap by what a user sees and never
 * by the store's layout: start `nbdsnap serve` and tell a refusal from a start, read a whole
 * export with a real client (nbdsh) and compare it chunk by chunk with the expected image, find
 * the bytes two copies of a store differ in, flip a byte, and the point-in-time verdict of one
 * start (refused, invalid, damaged, exact, or a failure naming what was seen).
 *
 * Servers listen on a Unix socket only (`-k`), so the hundreds of starts of the damage test
 * never race other test files for a TCP port.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { call } from '../../src/control/client.ts';
import { nbdsh } from './clients.ts';
import { CLI } from './server.ts';

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

// ------------------------------------------------------------------------------------- bytes

/** Every offset at which `a` and `b` differ (equal lengths). */
export function changedBytes(a: Buffer, b: Buffer): number[] {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  const out: number[] = [];
  const step = 4096;
  for (let at = 0; at < a.length; at += step) {
    const end = Math.min(a.length, at + step);
    if (a.subarray(at, end).equals(b.subarray(at, end))) continue;
    for (let i = at; i < end; i++) if (a[i] !== b[i]) out.push(i);
  }
  return out;
}

/** Every offset at which `needle` occurs in `hay`. */
export function findAll(hay: Buffer, needle: Buffer): number[] {
  const out: number[] = [];
  for (let at = hay.indexOf(needle); at >= 0; at = hay.indexOf(needle, at + 1)) out.push(at);
  return out;
}

/** XOR the byte at `offset` of `path` with `mask` (0xff by default), in place; returns [old, new]. */
export function flipByte(path: string, offset: number, mask = 0xff): [number, number] {
  const fd = openSync(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    if (readSync(fd, b, 0, 1, offset) !== 1) throw new Error(`${path} has no byte ${offset}`);
    const old = b[0] as number;
    b[0] = old ^ mask;
    writeSync(fd, b, 0, 1, offset);
    return [old, b[0] as number];
  } finally {
    closeSync(fd);
  }
}

/** `count` offsets spread evenly over [start, start + length). */
export function spread(start: number, length: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => start + Math.floor(((i + 0.5) * length) / count));
}

// ----------------------------------------------------------------------------------- serving

export interface Served {
  pid: number;
  /** Everything written to stderr so far (JSON log lines, and the CLI's one-line error). */
  stderr(): string;
  /** The exit code or signal if the process has exited. */
  exited(): number | string | undefined;
  /** Send `signal` (SIGTERM by default) and wait for the exit (SIGKILL after `graceMs`). */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<{ exit: number | string; killed: boolean }>;
}

export type ServeAttempt =
  | { kind: 'ready'; server: Served }
  | { kind: 'exited'; exit: number | string; firstLine: string; stderr: string }
  | { kind: 'hung'; stderr: string };

/**
 * The line of a server's stderr that says why it stopped: the CLI's `nbdsnap: error:` line, else
 * the first JSON line of level error, else the first line.
 */
export function reasonLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l.trim() !== '');
  const plain = lines.find((l) => !l.startsWith('{'));
  if (plain !== undefined) return plain;
  for (const l of lines) {
    try {
      const j = JSON.parse(l) as { level?: string; msg?: string; error?: string };
      if (j.level === 'error') return `${j.msg ?? ''} ${j.error ?? ''}`.trim();
    } catch {
      return l;
    }
  }
  return lines[0] ?? '(no stderr)';
}

/**
 * `nbdsnap serve ARGS... --pid-file F`: resolves once the pid file is written (ready), or with
 * the exit and the reason line when the server exits first, or 'hung' (killed) after `timeoutMs`.
 */
export async function tryServe(args: string[], pidFile: string, timeoutMs = 60_000): Promise<ServeAttempt> {
  rmSync(pidFile, { force: true });
  const child = spawn(process.execPath, [CLI, 'serve', ...args, '--pid-file', pidFile], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  live.add(child);
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  let exit: number | string | undefined;
  const exited = new Promise<number | string>((res) => {
    // 'close': the process has exited and its stderr is read to the end.
    child.on('close', (code, signal) => {
      live.delete(child);
      exit = code ?? signal ?? 'unknown';
      res(exit);
    });
  });
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(pidFile) || readFileSync(pidFile, 'utf8').trim() === '') {
    if (exit !== undefined) {
      return { kind: 'exited', exit, firstLine: reasonLine(err), stderr: err };
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      return { kind: 'hung', stderr: err };
    }
    await sleep(20);
  }
  const server: Served = {
    pid: child.pid as number,
    stderr: () => err,
    exited: () => exit,
    async stop(signal = 'SIGTERM', graceMs = 20_000) {
      if (exit !== undefined) return { exit, killed: false };
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const r = await exited;
      clearTimeout(timer);
      return { exit: r, killed: r === 'SIGKILL' && signal !== 'SIGKILL' };
    },
  };
  return { kind: 'ready', server };
}

/** A control call that gives up after `ms` (a hung server must not hang the test). */
export async function control<T>(socket: string, cmd: string, args: Record<string, unknown> = {}, ms = 20_000) {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`control ${cmd}: no answer after ${ms} ms`)), ms);
  });
  try {
    return (await Promise.race([call(socket, cmd, args), timeout])) as T;
  } finally {
    clearTimeout(timer);
  }
}

/** One entry of `snapshot list --json` (fields the tests judge by). */
export interface ListedSnapshot {
  export: string;
  state: string;
  reason?: string;
  /** Lost (damaged) chunks; absent on servers that do not count them. */
  damaged?: number;
}

export const listSnapshots = (socket: string) => control<ListedSnapshot[]>(socket, 'snapshot.list');

// ---------------------------------------------------------------------------------- reading

/** The URI of export `name` on the Unix socket `socket`. */
export const unixUri = (socket: string, name: string) => `nbd+unix:///${name}?socket=${socket}`;

/** What reading a whole export chunk by chunk gave, against the expected image. */
export interface ExportReading {
  /** Set when the client could not connect at all. */
  connectError?: string;
  size?: number;
  /** Bytes read back equal to the expected ones. */
  okBytes: number;
  /** [offset, errno or message] of each chunk whose read failed. */
  errors: [number, string][];
  /** [chunk offset, first differing byte offset, got, want] of each chunk that read wrong. */
  wrong: [number, number, number, number][];
}

/**
 * Read every byte of each export (1 MiB reads; a read that fails or differs is redone chunk by
 * chunk) with nbdsh and compare with the file `expected`. One nbdsh process for all exports.
 */
export async function readExports(items: { uri: string; expected: string }[], chunk: number): Promise<ExportReading[]> {
  const script = `
def check(uri, path, chunk):
    r = {'okBytes': 0, 'errors': [], 'wrong': []}
    exp = open(path, 'rb').read()
    g = nbd.NBD()
    try:
        g.connect_uri(uri)
    except nbd.Error as e:
        r['connectError'] = str(e)
        return r
    size = g.get_size()
    r['size'] = size
    if size != len(exp):
        return r
    step = 1 << 20
    for off in range(0, size, step):
        n = min(step, size - off)
        try:
            if g.pread(n, off) == exp[off:off + n]:
                r['okBytes'] += n
                continue
        except nbd.Error:
            pass
        for c in range(off, off + n, chunk):
            m = min(chunk, off + n - c)
            try:
                b = g.pread(m, c)
            except nbd.Error as e:
                r['errors'].append([c, e.errno or str(e)])
                continue
            if b == exp[c:c + m]:
                r['okBytes'] += m
            else:
                i = next(k for k in range(m) if b[k] != exp[c + k])
                r['wrong'].append([c, c + i, b[i], exp[c + i]])
    try:
        g.shutdown()
    except nbd.Error:
        pass
    return r
out['r'] = [check(u, p, ${chunk}) for (u, p) in ${JSON.stringify(items.map((i) => [i.uri, i.expected]))}]
`;
  return (await nbdsh(script)).r as ExportReading[];
}

/** One line about a reading, for failure messages. */
export function describeReading(r: ExportReading): string {
  if (r.connectError !== undefined) return `could not connect: ${r.connectError}`;
  const parts = [`${r.okBytes} of ${r.size} bytes exact`];
  if (r.errors.length > 0) {
    parts.push(`${r.errors.length} chunks failed (first at ${r.errors[0]?.[0]}: ${r.errors[0]?.[1]})`);
  }
  if (r.wrong.length > 0) {
    const [c, at, got, want] = r.wrong[0] as [number, number, number, number];
    parts.push(
      `${r.wrong.length} chunks WRONG (first chunk at ${c}: byte ${at} is 0x${got.toString(16)}, want 0x${want.toString(16)})`,
    );
  }
  return parts.join('; ');
}

export const isExact = (r: ExportReading, size: number) =>
  r.connectError === undefined && r.size === size && r.okBytes === size;

// --------------------------------------------------------------------------------- verdicts

export type Outcome = 'refused' | 'invalid' | 'damaged' | 'exact';

export interface Verdict {
  outcome: Outcome | 'FAIL';
  /** What was seen: the refusal line, the invalid reason, or why this is a failure. */
  detail: string;
}

export interface CheckOptions {
  /** Unix socket of the NBD server and its control socket. */
  socket: string;
  control: string;
  /** Export name of the snapshot and the origin. */
  snapshot: string;
  origin: string;
  /** Files holding the expected snapshot image and the expected origin image. */
  snapshotImage: string;
  originImage: string;
  size: number;
  chunk: number;
}

/**
 * Judge a running server: the snapshot must be listed invalid, or damaged with every read exact
 * or EIO, or read exactly; the origin must read exactly in every case. Lists before and after
 * reading (a damaged chunk may be counted only once a read found it).
 */
export async function judgeSnapshot(o: CheckOptions): Promise<Verdict> {
  const before = await listSnapshots(o.control);
  const entry = before.find((s) => s.export === o.snapshot);
  if (entry === undefined) {
    return { outcome: 'FAIL', detail: `${o.snapshot} is not listed at all (list: ${JSON.stringify(before)})` };
  }
  const [snap, origin] = await readExports(
    [
      { uri: unixUri(o.socket, o.snapshot), expected: o.snapshotImage },
      { uri: unixUri(o.socket, o.origin), expected: o.originImage },
    ],
    o.chunk,
  );
  if (snap === undefined || origin === undefined) return { outcome: 'FAIL', detail: 'nbdsh gave no reading' };
  if (!isExact(origin, o.size)) {
    return { outcome: 'FAIL', detail: `the origin does not read as written: ${describeReading(origin)}` };
  }
  if (entry.state === 'invalid') return { outcome: 'invalid', detail: entry.reason ?? '(no reason)' };
  if (entry.state !== 'valid') return { outcome: 'FAIL', detail: `listed "${entry.state}"` };
  if (snap.connectError !== undefined || snap.size !== o.size || snap.wrong.length > 0) {
    return { outcome: 'FAIL', detail: `listed valid, reads WRONG: ${describeReading(snap)}` };
  }
  if (snap.errors.length === 0) return { outcome: 'exact', detail: `damaged=${entry.damaged ?? 'n/a'}` };
  const notEio = snap.errors.filter(([, e]) => e !== 'EIO');
  if (notEio.length > 0) {
    return { outcome: 'FAIL', detail: `listed valid, reads fail with other than EIO: ${describeReading(snap)}` };
  }
  const after = (await listSnapshots(o.control)).find((s) => s.export === o.snapshot);
  if (after?.state === 'invalid') return { outcome: 'invalid', detail: `after reading: ${after.reason ?? ''}` };
  if ((after?.damaged ?? 0) > 0) {
    return { outcome: 'damaged', detail: `damaged=${after?.damaged}, ${snap.errors.length} chunks EIO` };
  }
  return {
    outcome: 'FAIL',
    detail: `reads answer EIO but the snapshot is listed valid and not damaged: ${describeReading(snap)}; after: ${JSON.stringify(after)}`,
  };
}

/** Lines of a table of counts (outcome -> n), for the test's summary. */
export function countTable(title: string, counts: Map<string, number>): string {
  const rows = [...counts.entries()].map(([k, v]) => `  ${k.padEnd(12)} ${String(v).padStart(5)}`);
  return [title, ...rows].join('\n');
}

// ---------------------------------------------------------------------------------- writing

/**
 * One nbdsh session writing `writes` in turn to export `name`: each write's outcome ('ok', or
 * the errno / message the client saw), in order. If nbdsh itself fails (the server went away),
 * every write counts as failed.
 */
export async function writeExport(socket: string, name: string, writes: { offset: number; data: Buffer }[]) {
  // The data goes through a file: a script holding it could exceed the argument size limit.
  const tmp = mkdtempSync(join(tmpdir(), 'nbdsnap-writes-'));
  const file = join(tmp, 'data');
  writeFileSync(file, Buffer.concat(writes.map((w) => w.data)));
  const plan = JSON.stringify(writes.map((w) => [w.offset, w.data.length]));
  const script = `
data = open(${JSON.stringify(file)}, 'rb').read()
at = 0
for i, (offset, length) in enumerate(${plan}):
    out[str(i)] = attempt(h.pwrite, data[at:at + length], offset)
    at += length
`;
  try {
    const r = await nbdsh(script, unixUri(socket, name));
    return writes.map((_, i) => String(r[String(i)]));
  } catch (err) {
    return writes.map(() => `nbdsh: ${(err as Error).message.split('\n')[0]}`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
