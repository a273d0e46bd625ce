/**
 * How `nbdsnap serve` stops. The first SIGTERM or SIGINT starts a graceful stop: named steps run
 * in order (serve.ts lists them), a line is logged every few seconds saying which step it is
 * waiting for, and the whole stop is bounded by --shutdown-timeout. A second signal, or the
 * timeout, ends the process at once WITHOUT the store's clean mark: the next start replays the
 * journal, as after a crash, which the store is built to survive (copies are durable before the
 * origin writes they protect). A step marked `clean` (the store's CLEAN batch) turns that into
 * "already clean": a forced end after it loses nothing.
 *
 * The forced end cannot be `process.exit()`: exit joins libuv's thread pool, so it waits for every
 * job running there (an fdatasync of a large dirty cache, a read of a device that stopped
 * answering) and is not prompt. Instead the signal handlers are removed (libuv puts back the
 * default action) and the process sends itself SIGTERM: the kernel ends it (status 143), threads
 * and all. SIGKILL follows if that did not work.
 */
import type { Logger } from '../log.ts';

export interface ShutdownStep {
  /** Logged while waited for: "connections", "store", ... */
  name: string;
  run: () => Promise<void>;
  /**
   * Once this step is done the store is cleanly closed (a forced end after it loses nothing).
   * Skipped if an earlier step failed: the clean mark must not vouch for what may not be durable.
   */
  clean?: boolean;
  /** Not bounded by the timeout (a transient store's merge, which must not stop half done). */
  unbounded?: boolean;
  /** What the progress line adds while this step runs. */
  detail?: () => Record<string, unknown>;
}

export interface ShutdownOptions {
  /** Milliseconds the whole stop may take before the forced end; 0 for no limit. */
  timeoutMs: number;
  /** Milliseconds between progress lines (default 5 s). */
  progressMs?: number;
}

/** End the process now, whatever runs on the thread pool (see the head of this file). */
export function endNow(): never {
  process.removeAllListeners('SIGTERM');
  process.removeAllListeners('SIGINT');
  process.kill(process.pid, 'SIGTERM');
  // Delivered at once, normally; should a handler have been put back meanwhile:
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
}

/**
 * Resolve once a graceful stop has run every step (each one, even after another failed); reject
 * then with the first failure. The first SIGTERM or SIGINT starts it; a second one, or the
 * timeout, ends the process without waiting (endNow).
 */
export function stopOnSignals(log: Logger, steps: () => ShutdownStep[], opts: ShutdownOptions): Promise<void> {
  const progressMs = opts.progressMs ?? 5000;
  return new Promise<void>((resolve, reject) => {
    let started = 0;
    let current: ShutdownStep | undefined;
    let clean = false;
    let finished = false;
    const force = (why: string) => {
      log.warn(`${why}: stopping now`, {
        waitingFor: current?.name ?? null,
        cleanMark: clean ? 'written' : 'not written: the next start replays the journal',
      });
      endNow();
    };
    const onSignal = (sig: NodeJS.Signals) => {
      // Every step done (the exit is under way): nothing is lost by exiting now.
      if (finished) process.exit(process.exitCode ?? 0);
      if (started > 0) force(`second ${sig} during the shutdown`);
      started = Date.now();
      log.info('shutting down', {
        signal: sig,
        ...(opts.timeoutMs > 0 ? { timeoutSeconds: opts.timeoutMs / 1000 } : {}),
      });
      let bounded = 0; // milliseconds spent in steps the timeout applies to
      let since = started;
      let lastLine = started;
      const timer = setInterval(
        () => {
          const now = Date.now();
          const spent = bounded + (current?.unbounded === true ? 0 : now - since);
          if (opts.timeoutMs > 0 && spent >= opts.timeoutMs)
            force(`shutdown not done after ${opts.timeoutMs / 1000} s`);
          if (now - lastLine < progressMs) return;
          lastLine = now;
          log.info('shutdown waiting', {
            for: current?.name ?? null,
            seconds: Math.round((now - started) / 1000),
            ...(current?.detail?.() ?? {}),
            ...(current?.unbounded === true ? { hint: 'a second SIGTERM stops now' } : {}),
          });
        },
        Math.min(250, progressMs),
      );
      void (async () => {
        let failure: unknown;
        for (const step of steps()) {
          current = step;
          since = Date.now();
          if (step.clean === true && failure !== undefined) {
            // The clean mark vouches for everything before it: not after a failed step.
            log.warn(`shutdown step ${step.name} skipped after a failed step: the next start replays the journal`);
            continue;
          }
          try {
            await step.run();
            if (step.clean === true) clean = true;
          } catch (err) {
            failure ??= err;
            log.error(`shutdown step ${step.name} failed`, { err: err instanceof Error ? err.message : String(err) });
          }
          if (step.unbounded !== true) bounded += Date.now() - since;
        }
        current = undefined;
        finished = true;
        clearInterval(timer);
        if (failure === undefined) resolve();
        else reject(failure);
      })();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
