/**
 * Running real NBD clients (nbdinfo, nbdsh, nbdcopy, qemu-img, qemu-io, fio, nbdfuse) from
 * tests. Every child gets Debian's /usr/bin first on PATH (a pyenv `python3` shim cannot see
 * python3-libnbd, see /work/shared/clients.md), is killed by its own PID if it outlives its
 * timeout, and is killed when the test process exits, whatever happened.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  openSync,
  readFileSync,
  readSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RunningServer } from './server.ts';

export interface RunResult {
  /** Exit code, or null when the child was killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: Record<string, string | undefined>;
  /** Written to the child's stdin, which is then closed. */
  input?: string | Buffer;
  cwd?: string;
  /** SIGKILL the child after this long (default 90 s); the result then has signal SIGKILL. */
  timeoutMs?: number;
}

/** Environment for client tools: Debian's binaries and Python first. */
export const CLIENT_ENV: Record<string, string | undefined> = {
  ...process.env,
  PATH: `/usr/bin:/usr/sbin:/bin:/sbin:${process.env.PATH ?? ''}`,
};

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** Run `cmd args...` to completion and collect its output. Never rejects for a non-zero exit. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: { ...CLIENT_ENV, ...opts.env },
      cwd: opts.cwd,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    live.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 90_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      live.delete(child);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** A child left running (e.g. nbdfuse); stop it with `kill()`, which only signals this PID. */
export interface Background {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | string>;
  kill(signal?: NodeJS.Signals): void;
}

export function background(cmd: string, args: string[], opts: { env?: Record<string, string | undefined> } = {}) {
  const child = spawn(cmd, args, { env: { ...CLIENT_ENV, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let out = '';
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<number | string>((res) => {
    child.on('close', (code, signal) => {
      live.delete(child);
      res(code ?? signal ?? 'unknown');
    });
  });
  const bg: Background = {
    child,
    output: () => out,
    exited,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
  return bg;
}

/**
 * Wait until `path` exists and is not empty (a pid file: the process is ready). Throws with the
 * process's output if it exits first, or after `timeoutMs`, killing it by its PID.
 */
export async function waitForFile(path: string, proc: Background, timeoutMs = 30_000): Promise<void> {
  let exited: number | string | undefined;
  void proc.exited.then((c) => {
    exited = c;
  });
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(path) || readFileSync(path, 'utf8').trim() === '') {
    if (exited !== undefined) throw new Error(`${proc.child.spawnfile} exited (${exited}):\n${proc.output()}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`${proc.child.spawnfile} not ready after ${timeoutMs} ms:\n${proc.output()}`);
    }
    await sleep(25);
  }
}

/**
 * Teardown: stop a test server with SIGTERM, and SIGKILL it by its PID if it has not exited
 * after 15 s, so a hung server never outlives the test run. Tests that check the exit itself
 * call `srv.stop()` and assert its result.
 */
export async function stopQuietly(srv: RunningServer | undefined): Promise<void> {
  if (srv === undefined) return;
  const timer = setTimeout(() => srv.child.kill('SIGKILL'), 15_000);
  try {
    await srv.stop();
  } finally {
    clearTimeout(timer);
  }
}

/** True when `tool` is installed (tests for missing tools are skipped, like nbdkit's exit 77). */
export function hasTool(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { env: CLIENT_ENV }).status === 0;
}

/** Fails the test with the tool's output when it did not exit 0; returns stdout. */
export function ok(r: RunResult, what = 'command'): string {
  if (r.code !== 0) throw new Error(`${what} exited ${r.code ?? r.signal}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  return r.stdout;
}

/**
 * Prelude of every nbdsh script: `attempt(f, *args)` runs one libnbd call and gives 'ok', the
 * errno name of the NBD error the server answered (e.g. 'EINVAL'), or 'client-side: ...' when
 * libnbd refused to send the request at all; scripts put their
 * findings in `out`, printed as one `RESULT {json}` line at the end.
 */
const PRELUDE = `
import json
out = {}
def attempt(f, *args):
    try:
        f(*args)
        return 'ok'
    except nbd.Error as e:
        if 'command failed' not in str(e):
            return 'client-side: ' + str(e)
        return e.errno or ('errnum %d' % e.errnum)
`;

/**
 * Run a Python snippet in nbdsh (`h` is the handle; connected to `uri` first when given) and
 * return what it stored in `out`. The snippet must not be indented.
 */
export async function nbdsh(script: string, uri?: string, opts: { baseAllocation?: boolean } = {}) {
  const args = [...(opts.baseAllocation ? ['--base-allocation'] : []), ...(uri ? ['-u', uri] : [])];
  const full = `${PRELUDE}\n${script}\nprint('RESULT ' + json.dumps(out))\n`;
  const r = await run('nbdsh', [...args, '-c', full]);
  const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
  if (r.code !== 0 || line === undefined) {
    throw new Error(`nbdsh failed (${r.code ?? r.signal})\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
  // biome-ignore lint/suspicious/noExplicitAny: whatever the script chose to report
  return JSON.parse(line.slice('RESULT '.length)) as Record<string, any>;
}

// --------------------------------------------------------------------------------- image files

/** A sparse file of `size` bytes (64 MiB by default). */
export function sparseImage(path: string, size = 64 * 1024 * 1024): string {
  writeFileSync(path, '');
  truncateSync(path, size);
  return path;
}

/** Write `data` at `offset` into an existing file, in place. */
export function writeAt(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** `length` bytes of `path` from `offset`. */
export function readAt(path: string, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, b, 0, length, offset);
  } finally {
    closeSync(fd);
  }
  return b;
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256')
    .update(typeof data === 'string' ? readFileSync(data) : data)
    .digest('hex');
}

/** A reproducible pseudo-random buffer (xorshift32), so failures can be replayed. */
export function pattern(length: number, seed = 1): Buffer {
  const b = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/**
 * 'equal', or where two buffers first differ. Compare with this, not with toEqual: vitest's
 * deep equality walks a Buffer byte by byte and takes seconds per MiB.
 */
export function sameBytes(got: Buffer, want: Buffer): string {
  if (got.equals(want)) return 'equal';
  if (got.length !== want.length) return `length ${got.length}, want ${want.length}`;
  const i = got.findIndex((b, k) => b !== want[k]);
  return `first difference at byte ${i}: 0x${got[i]?.toString(16)}, want 0x${want[i]?.toString(16)}`;
}

export const MiB = 1024 * 1024;
