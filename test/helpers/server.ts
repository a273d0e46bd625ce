/**
 * Start `nbdsnap serve` as a real child process for tests, the way users start it: wait for the
 * pid file (written once the server accepts connections), talk to it over loopback, stop it by
 * its PID. Every server is killed when the test process exits, whatever happened.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const ROOT = resolve(import.meta.dirname, '../..');
export const CLI = join(ROOT, 'bin/nbdsnap.cjs');

export interface RunningServer {
  port: number;
  pid: number;
  child: ChildProcess;
  /** nbd://127.0.0.1:PORT/NAME */
  uri(name?: string): string;
  /** Everything the server wrote to stderr so far (JSON log lines). */
  stderr(): string;
  /** SIGTERM (or the given signal) and wait for exit; resolves with the exit code or signal. */
  stop(signal?: NodeJS.Signals): Promise<number | string>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

// Below Linux's ephemeral range (32768 and up), so no client socket takes one; a random block of
// 50 per test file, and a start that still finds its port taken tries another (startServer, Rig).
let nextPort = 20000 + Math.floor(Math.random() * 250) * 50;
/** A loopback port unlikely to clash between parallel test files. */
export function freshPort(): number {
  nextPort += 1;
  return nextPort;
}

export function tempDir(prefix = 'nbdsnap-test-'): { path: string; cleanup(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * Start `nbdsnap serve ARGS... -p PORT -b 127.0.0.1 --pid-file F`. `args` holds the images and
 * any other flags (e.g. ['disk=/tmp/x.img', '-r']).
 */
export async function startServer(args: string[], opts: { port?: number } = {}): Promise<RunningServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startServerOn(args, opts.port ?? freshPort());
    } catch (err) {
      // Another process (a parallel test file) took the port first: another one, unless it was asked for.
      if (opts.port !== undefined || attempt >= 5 || !isPortTaken(err)) throw err;
    }
  }
}

/** A start that failed because its TCP port was in use. */
export function isPortTaken(err: unknown): boolean {
  return err instanceof Error && /cannot listen on .*address already in use/.test(err.message);
}

async function startServerOn(args: string[], port: number): Promise<RunningServer> {
  const dir = tempDir('nbdsnap-pid-');
  const pidFile = join(dir.path, 'pid');
  const child = spawn(
    process.execPath,
    [CLI, 'serve', ...args, '-p', String(port), '-b', '127.0.0.1', '--pid-file', pidFile],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  live.add(child);
  let err = '';
  let out = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  let exited: number | string | undefined;
  const exitPromise = new Promise<number | string>((res) => {
    child.on('exit', (code, signal) => {
      live.delete(child);
      exited = code ?? signal ?? 'unknown';
      res(exited);
    });
  });
  const deadline = Date.now() + 30_000;
  while (!existsSync(pidFile) || readFileSync(pidFile, 'utf8').trim() === '') {
    if (exited !== undefined) throw new Error(`nbdsnap serve exited (${exited}) before ready:\n${out}\n${err}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nbdsnap serve not ready after 30 s:\n${out}\n${err}`);
    }
    await sleep(25);
  }
  return {
    port,
    pid: child.pid as number,
    child,
    uri: (name = '') => `nbd://127.0.0.1:${port}/${name}`,
    stderr: () => err,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (exited === undefined) child.kill(signal);
      const r = await exitPromise;
      dir.cleanup();
      return r;
    },
  };
}
