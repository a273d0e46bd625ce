/**
 * `serve --fork` and `serve --exit-with-parent`, the way qemu-nbd and nbdkit users know them.
 *
 * --fork: the command re-runs itself as a detached child (its own session, stdin and stdout on
 * /dev/null, stderr shared, the same working directory) and waits. The child says it is ready over
 * an IPC channel once it accepts connections and has written its pid file, passing the lines it
 * would have printed; the parent prints them and exits 0. If the child exits first, the parent
 * exits with the child's status (its error line is already on the shared stderr).
 *
 * --exit-with-parent: the server stops gracefully (as on SIGTERM) when the process that started
 * it exits. Linux's prctl(PR_SET_PDEATHSIG) is not reachable from Node without the native helper,
 * and it fires when the parent *thread* that forked us exits, not the process; instead the parent
 * pid is polled once a second: when the parent exits we are re-parented and process.ppid changes.
 * That works without the native helper, costs one getppid a second, and stops within a second.
 */
import { spawn } from 'node:child_process';

const CHILD_ENV = 'NBDSNAP_FORK_CHILD';

/** The parent as early as we can see it: a parent that exits before this is never noticed. */
const FIRST_PARENT = process.ppid;

/** Whether this process is the child of `serve --fork` (it then reports readiness, not prints). */
export const isForkChild = (): boolean => process.env[CHILD_ENV] === '1' && typeof process.send === 'function';

/** Parent side of --fork: never returns; exits 0 once the child is ready, else with its status. */
export function forkServer(): Promise<never> {
  return new Promise(() => {
    const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      detached: true,
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      env: { ...process.env, [CHILD_ENV]: '1' },
    });
    child.on('message', (m: unknown) => {
      const lines = (m as { ready?: boolean; lines?: string[] }).lines ?? [];
      for (const line of lines) process.stdout.write(`${line}\n`);
      child.disconnect();
      child.unref();
      process.exit(0);
    });
    child.on('error', (err) => {
      process.stderr.write(`nbdsnap: error: cannot start the server: ${err.message}\n`);
      process.exit(1);
    });
    child.on('exit', (code, signal) => {
      if (signal !== null)
        process.stderr.write(`nbdsnap: error: the server was killed by ${signal} before it was ready\n`);
      process.exit(code === null || code === 0 ? 1 : code);
    });
  });
}

/** Child side of --fork: hand the start-up lines to the parent and let it exit. */
export function reportReady(lines: string[]): void {
  process.send?.({ ready: true, lines }, () => process.disconnect?.());
}

/** Call `stop` once the parent process has exited (polled; see above). Returns the canceller. */
export function watchParent(stop: () => void, intervalMs = 1000): () => void {
  const parent = FIRST_PARENT;
  if (process.ppid !== parent) stop();
  const timer = setInterval(() => {
    if (process.ppid !== parent) {
      clearInterval(timer);
      stop();
    }
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
