/**
 * Host side of test/kernel/views.test.ts: ext4 images made from a file tree, exports mounted on the
 * host (nbdfuse + loop, torn down in reverse order whatever happens), trees of files and their
 * sha256, and a look at an ext4 superblock.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { hasTool, ok, run, sha256 } from '../helpers/clients.ts';
import { type FuseDisk, loopMount, nbdfuse } from '../helpers/mounts.ts';
import { makeSparse } from '../helpers/snapshots.ts';

/** Why export mounts on the host cannot work here, or undefined when they can. */
export function hostMountsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'mounting exports on the host needs root';
  if (!existsSync('/dev/fuse') || !existsSync('/dev/loop-control')) return 'no /dev/fuse or /dev/loop-control';
  const tools = ['nbdfuse', 'fusermount3', 'mke2fs', 'e2fsck', 'mount', 'umount', 'losetup', 'sync'];
  const missing = tools.filter((t) => !hasTool(t));
  return missing.length === 0 ? undefined : `missing tools: ${missing.join(', ')}`;
}

export type Tree = Record<string, Buffer | string>;
export type Shas = Record<string, string>;

export function shas(tree: Tree): Shas {
  return Object.fromEntries(Object.entries(tree).map(([p, c]) => [p, sha256(Buffer.from(c))]));
}

/** Write every file of `tree` under `dir` (folders made as needed). */
export function writeTree(dir: string, tree: Tree): void {
  for (const [p, content] of Object.entries(tree)) {
    mkdirSync(join(dir, p, '..'), { recursive: true });
    writeFileSync(join(dir, p), content);
  }
}

/** Every regular file under dir (relative path -> sha256), lost+found left out. */
export function treeShas(dir: string): Shas {
  const out: Shas = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        if (!(d === dir && e.name === 'lost+found')) walk(p);
      } else if (e.isFile()) out[relative(dir, p)] = sha256(readFileSync(p));
    }
  };
  walk(dir);
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
}

/**
 * A sparse image of `size` bytes holding a new ext4 made from `tree` (mke2fs -d). Inode tables
 * and journal are initialised at once, so no lazy-init thread writes to the device later.
 */
export async function ext4Image(path: string, size: number, label: string, tree: Tree, work: string): Promise<void> {
  const src = join(work, `src-${label}`);
  mkdirSync(src, { recursive: true });
  writeTree(src, tree);
  makeSparse(path, size);
  const opts = ['-q', '-F', '-t', 'ext4', '-E', 'lazy_itable_init=0,lazy_journal_init=0', '-L', label];
  ok(await run('mke2fs', [...opts, '-d', src, path]), `mke2fs ${label}`);
}

/** The ext4 superblock facts the tests look at (from the first 2 KiB of a device). */
export function ext4Super(head: Buffer): { magic: boolean; needsRecovery: boolean; label: string } {
  const sb = head.subarray(1024, 2048);
  return {
    magic: sb.readUInt16LE(0x38) === 0xef53,
    // s_feature_incompat & EXT4_FEATURE_INCOMPAT_RECOVER: the journal must be replayed
    needsRecovery: (sb.readUInt32LE(0x60) & 0x4) !== 0,
    label: sb.subarray(0x78, 0x88).toString('latin1').replace(/\0+$/, ''),
  };
}

/** `e2fsck -f -n FILE`: '' when the file system is clean, else e2fsck's report. */
export async function fsckProblems(file: string): Promise<string> {
  const r = await run('e2fsck', ['-f', '-n', file]);
  return r.code === 0 ? '' : `e2fsck exit ${r.code}\n${r.stdout}${r.stderr}`;
}

/**
 * Exports mounted on the host: nbdfuse exposes the export as a file (read-only when the mount
 * options hold `ro`), a loop mount mounts its ext4. Every mount is undone, last first, by the
 * end of `with` or by `cleanup()` (lazy unmount, loop detach, nbdfuse killed by its own PID).
 */
export class HostMounts {
  private readonly undo: (() => Promise<unknown>)[] = [];
  private count = 0;
  private readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  async with<T>(uri: string, options: string[], fn: (mnt: string) => Promise<T> | T): Promise<T> {
    const id = ++this.count;
    try {
      const disk: FuseDisk = await nbdfuse(uri, join(this.dir, `fuse-${id}`), { readOnly: options.includes('ro') });
      this.undo.push(() => disk.unmount());
      const fs = await loopMount(disk.file, join(this.dir, `mnt-${id}`), options);
      this.undo.push(() => fs.unmount());
      return await fn(fs.dir);
    } finally {
      await this.cleanup();
    }
  }

  async cleanup(): Promise<void> {
    while (this.undo.length > 0) await (this.undo.pop() as () => Promise<unknown>)().catch(() => undefined);
  }
}

/** `sync`: every file system and block device on the host, so loop + nbdfuse writes reach the server. */
export async function syncAll(): Promise<void> {
  ok(await run('sync', []), 'sync');
}
