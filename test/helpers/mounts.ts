/**
 * Mounting for the file-system test: nbdfuse exposes an export as a file, `mount -o loop`
 * mounts a file system on that file. Both are torn down reliably (lazy unmount, loop detach,
 * nbdfuse killed by its own PID) even when a test fails halfway, so no mount outlives the run.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Background, background, ok, run, waitForFile } from './clients.ts';

/** True when `path` is a mount point right now. */
export function isMounted(path: string): boolean {
  const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n');
  // Fields are space-separated, with spaces in paths escaped as \040.
  return mounts.some((l) => l.split(' ')[1]?.replace(/\\040/g, ' ') === path);
}

export interface FuseDisk {
  /** The file that is the export. */
  file: string;
  proc: Background;
  /** fusermount3 -u, then wait for nbdfuse to exit (killed by PID if it will not). */
  unmount(): Promise<void>;
}

/** `nbdfuse [-r] DIR/disk URI`; resolves once nbdfuse has written its pid file (ready). */
export async function nbdfuse(uri: string, dir: string, opts: { readOnly?: boolean } = {}): Promise<FuseDisk> {
  mkdirSync(dir, { recursive: true });
  const pidFile = `${dir}.pid`;
  const file = join(dir, 'disk');
  const proc = background('nbdfuse', [...(opts.readOnly ? ['-r'] : []), '-P', pidFile, file, uri]);
  await waitForFile(pidFile, proc, 20_000);
  const unmount = async () => {
    if (isMounted(dir)) await run('fusermount3', ['-u', dir]);
    if (isMounted(dir)) await run('fusermount3', ['-u', '-z', dir]);
    const gone = await Promise.race([proc.exited, sleep(10_000).then(() => undefined)]);
    if (gone === undefined) {
      proc.kill('SIGKILL');
      await proc.exited;
    }
  };
  return { file, proc, unmount };
}

/** `mount -o OPTS,loop FILE DIR`; unmount() also detaches any loop device left on FILE. */
export async function loopMount(file: string, dir: string, options: string[] = []) {
  mkdirSync(dir, { recursive: true });
  ok(await run('mount', ['-o', [...options, 'loop'].join(','), file, dir]), 'mount');
  return {
    dir,
    async unmount(): Promise<void> {
      if (isMounted(dir)) {
        const r = await run('umount', [dir]);
        if (r.code !== 0) await run('umount', ['-l', dir]);
      }
      await detachLoops(file);
    },
  };
}

/** Detach every loop device backed by `file` (mount's autoclear normally did it already). */
export async function detachLoops(file: string): Promise<void> {
  const r = await run('losetup', ['-j', file]);
  for (const line of r.stdout.split('\n')) {
    const dev = line.split(':')[0];
    if (dev?.startsWith('/dev/loop')) await run('losetup', ['-d', dev]);
  }
}
