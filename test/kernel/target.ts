/**
 * The NBD server the kernel-client tests attach to: `nbdsnap serve` (test/helpers/server.ts), or,
 * with NBDSNAP_KERNEL_TARGET=nbdkit, the nbdkit reference server serving the same files, which
 * tells a harness problem from a server bug (`NBDSNAP_KERNEL_TARGET=nbdkit npx vitest run test/kernel`);
 * NBDSNAP_KERNEL_NBDKIT_ARGS adds nbdkit arguments (filters) to break it on purpose.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freshPort, startServer } from '../helpers/server.ts';

export const TARGET = process.env.NBDSNAP_KERNEL_TARGET === 'nbdkit' ? 'nbdkit' : 'nbdsnap';

export interface Target {
  port: number;
  pid: number;
  stderr(): string;
  alive(): boolean;
  stop(): Promise<number | string>;
}

/**
 * Serve every file of `dir` as an export named after the file (`names` lists them), read-only
 * with `readOnly`.
 */
export async function startTarget(dir: string, names: string[], readOnly: boolean): Promise<Target> {
  if (TARGET === 'nbdkit') return startNbdkit(dir, readOnly);
  const s = await startServer([...names.map((n) => `${n}=${join(dir, n)}`), ...(readOnly ? ['-r'] : [])]);
  let exited = false;
  s.child.on('exit', () => {
    exited = true;
  });
  return {
    port: s.port,
    pid: s.pid,
    stderr: s.stderr,
    alive: () => !exited && s.child.exitCode === null,
    stop: () => s.stop(),
  };
}

async function startNbdkit(dir: string, readOnly: boolean): Promise<Target> {
  const port = freshPort();
  const tmp = mkdtempSync(join(tmpdir(), 'nbdkit-pid-'));
  const pidFile = join(tmp, 'pid');
  const extra = (process.env.NBDSNAP_KERNEL_NBDKIT_ARGS ?? '').split(' ').filter((a) => a !== '');
  const child: ChildProcess = spawn(
    'nbdkit',
    [
      ...['-f', '-P', pidFile, '-i', '127.0.0.1', '-p', String(port), ...(readOnly ? ['-r'] : [])],
      // e.g. NBDSNAP_KERNEL_NBDKIT_ARGS='--filter=multi-conn multi-conn-mode=disable' to see a check fail
      ...extra.filter((a) => a.startsWith('-')),
      ...['file', `dir=${dir}`],
      ...extra.filter((a) => !a.startsWith('-')),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  let exited: number | string | undefined;
  const exit = new Promise<number | string>((res) => {
    child.on('exit', (code, signal) => {
      exited = code ?? signal ?? 'unknown';
      res(exited);
    });
  });
  process.on('exit', () => child.kill('SIGKILL'));
  const deadline = Date.now() + 30_000;
  while (!existsSync(pidFile) || readFileSync(pidFile, 'utf8').trim() === '') {
    if (exited !== undefined || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nbdkit not ready (${exited ?? 'timeout'}): ${err}`);
    }
    await sleep(25);
  }
  return {
    port,
    pid: child.pid as number,
    stderr: () => err,
    alive: () => exited === undefined,
    async stop() {
      if (exited === undefined) child.kill('SIGTERM');
      const r = await exit;
      rmSync(tmp, { recursive: true, force: true });
      return r;
    },
  };
}
