/**
 * Mounting for the file-system tests: nbdfuse exposes an export as a file, `mount -o loop`
 * mounts a file system on that file. Both are torn down reliably (lazy unmount, loop detach,
 * nbdfuse killed by its own PID) even when a test fails halfway, so no mount outlives the run.
 * `Mounts` keeps a test file's mounts and the steps to undo them (ext4 on an export, its files
 * by sha256).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Background, background, hasTool, ok, run, sha256, waitForFile } from './clients.ts';

/** Root, /dev/fuse, loop devices, and nbdfuse, mount and mkfs.ext4 with the other `tools`. */
export function canMountExt4(tools: string[] = []): boolean {
  return (
    process.getuid?.() === 0 &&
    existsSync('/dev/fuse') &&
    existsSync('/dev/loop-control') &&
    ['nbdfuse', 'fusermount3', 'mkfs.ext4', 'mount', 'umount', 'losetup', ...tools].every(hasTool)
  );
}

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

/** name -> sha256 of each file's content. */
export function hashes(files: Record<string, Buffer>): Record<string, string> {
  return Object.fromEntries(Object.entries(files).map(([n, c]) => [n, sha256(c)]));
}

/**
 * The exports a test file exposes with nbdfuse (under `dir`) and mounts (on `mnt`), with the steps
 * that undo them: cleanup() runs them, last first, whatever happened (call it after each test).
 */
export class Mounts {
  readonly dir: string;
  readonly mnt: string;
  private readonly undo: (() => Promise<unknown>)[] = [];
  private fuses = 0;

  constructor(dir: string, mnt: string) {
    this.dir = dir;
    this.mnt = mnt;
  }

  async cleanup(): Promise<void> {
    while (this.undo.length > 0) await (this.undo.pop() as () => Promise<unknown>)().catch(() => {});
  }

  /** nbdfuse of the export at `uri` (read-only if asked), stopped by cleanup(). */
  async expose(uri: string, readOnly = false): Promise<FuseDisk> {
    const disk = await nbdfuse(uri, join(this.dir, `fuse-${++this.fuses}`), { readOnly });
    this.undo.push(() => disk.unmount());
    return disk;
  }

  /**
   * Expose the export and loop-mount it on `mnt` with `options` (read-only through nbdfuse too
   * when they include "ro"); the returned function unmounts both, in order.
   */
  async mount(uri: string, options: string[] = []): Promise<() => Promise<void>> {
    const disk = await this.expose(uri, options.includes('ro'));
    const fs = await loopMount(disk.file, this.mnt, options);
    this.undo.push(() => fs.unmount());
    return async () => {
      await (this.undo.pop() as () => Promise<unknown>)();
      await (this.undo.pop() as () => Promise<unknown>)();
    };
  }

  /** mkfs.ext4 (label "origin") on the export, then mount it, write `files` (path -> content), unmount. */
  async makeExt4(uri: string, files: Record<string, Buffer>): Promise<void> {
    const disk = await this.expose(uri);
    ok(await run('mkfs.ext4', ['-q', '-F', '-L', 'origin', disk.file]), 'mkfs.ext4');
    await this.cleanup();
    const unmount = await this.mount(uri);
    for (const [name, content] of Object.entries(files)) {
      mkdirSync(join(this.mnt, name, '..'), { recursive: true });
      writeFileSync(join(this.mnt, name), content);
    }
    await unmount();
  }

  /** name -> sha256 of the mounted file `name`, or 'missing'. */
  mounted(names: string[]): Record<string, string> {
    return Object.fromEntries(
      names.map((n) => [n, existsSync(join(this.mnt, n)) ? sha256(readFileSync(join(this.mnt, n))) : 'missing']),
    );
  }
}
