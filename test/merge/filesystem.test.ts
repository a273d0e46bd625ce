/**
 * The rollback story on a real file system (the kernel-VM version is in test/kernel): ext4 on
 * the origin (nbdfuse exposes the export as a file, mkfs.ext4 formats it, `mount -o loop`
 * mounts it), files written, unmounted; a snapshot taken; files changed, deleted and added,
 * unmounted; `nbdsnap merge --wait`; then the origin is mounted again (read-write) and holds
 * exactly the original files (sha256) and nothing else, e2fsck finds it clean, and the snapshot
 * is gone. Needs root, /dev/fuse and loop devices; mounts and nbdfuse are torn down even when a
 * step fails.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { hasTool, ok, pattern, run, sha256 } from '../helpers/clients.ts';
import { type FuseDisk, loopMount, nbdfuse } from '../helpers/mounts.ts';
import { MiB, makeSparse, Rig, tempDir } from '../helpers/snapshots.ts';

const usable =
  process.getuid?.() === 0 &&
  existsSync('/dev/fuse') &&
  existsSync('/dev/loop-control') &&
  ['nbdfuse', 'fusermount3', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'losetup'].every(hasTool);

const OLD: Record<string, Buffer> = {
  'keep.txt': Buffer.from('unchanged after the snapshot\n'),
  'change.bin': pattern(3 * MiB + 77, 41),
  'dir/delete.bin': pattern(2 * MiB, 42),
  'dir/deep/append.txt': Buffer.from('first line\n'),
};

describe.skipIf(!usable)('ext4 on the origin, rolled back by a merge', () => {
  const dir = tempDir('nbdsnap-merge-fs-');
  const rig = new Rig(dir.path, {
    devices: { disk: makeSparse(join(dir.path, 'disk.img'), 32 * MiB) },
    stores: [makeSparse(join(dir.path, 'store.img'), 64 * MiB)],
    chunkSize: '64K',
  });
  const mnt = join(dir.path, 'mnt');
  /** Undo steps, last first, run after each test whatever happened. */
  const undo: (() => Promise<unknown>)[] = [];
  let fuses = 0;

  async function cleanup(): Promise<void> {
    while (undo.length > 0) await (undo.pop() as () => Promise<unknown>)().catch(() => {});
  }

  async function exposeOrigin(): Promise<FuseDisk> {
    const disk = await nbdfuse(rig.uri('disk'), join(dir.path, `fuse-${++fuses}`));
    undo.push(() => disk.unmount());
    return disk;
  }

  /** Mount the origin read-write; the returned function unmounts it and nbdfuse, in order. */
  async function mountOrigin(): Promise<() => Promise<void>> {
    const disk = await exposeOrigin();
    const fs = await loopMount(disk.file, mnt);
    undo.push(() => fs.unmount());
    return async () => {
      await (undo.pop() as () => Promise<unknown>)();
      await (undo.pop() as () => Promise<unknown>)();
    };
  }

  const hashes = (files: Record<string, Buffer>) =>
    Object.fromEntries(Object.entries(files).map(([n, c]) => [n, sha256(c)]));
  const mounted = (names: string[]) =>
    Object.fromEntries(
      names.map((n) => [n, existsSync(join(mnt, n)) ? sha256(readFileSync(join(mnt, n))) : 'missing']),
    );

  afterEach(cleanup);
  afterAll(async () => {
    await cleanup();
    await rig.stop();
    dir.cleanup();
  });

  it('formats and fills the origin, unmounts, takes a snapshot', async () => {
    await rig.start();
    const disk = await exposeOrigin();
    ok(await run('mkfs.ext4', ['-q', '-F', '-L', 'origin', disk.file]), 'mkfs.ext4');
    await cleanup();
    const unmount = await mountOrigin();
    for (const [name, content] of Object.entries(OLD)) {
      mkdirSync(join(mnt, name, '..'), { recursive: true });
      writeFileSync(join(mnt, name), content);
    }
    await unmount();
    expect(await rig.createSnapshot('disk', 'before')).toEqual(['disk@before']);
  });

  it('changes, deletes and adds files on the origin', async () => {
    const unmount = await mountOrigin();
    expect(mounted(Object.keys(OLD))).toEqual(hashes(OLD));
    writeFileSync(join(mnt, 'change.bin'), pattern(3 * MiB, 51));
    rmSync(join(mnt, 'dir/delete.bin'));
    writeFileSync(join(mnt, 'dir/deep/append.txt'), 'first line\nsecond line\n');
    writeFileSync(join(mnt, 'new.bin'), pattern(5 * MiB, 52));
    rmSync(join(mnt, 'keep.txt'));
    writeFileSync(join(mnt, 'keep.txt'), 'replaced\n');
    await unmount();
  });

  it('merges the snapshot with --wait', async () => {
    const r = await rig.cli(['merge', 'disk@before', '--wait']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('merge of disk@before finished');
    expect(await rig.list()).toEqual([]);
  });

  it('mounts the origin again: exactly the original files, and a clean file system', async () => {
    const disk = await exposeOrigin();
    const fsck = await run('e2fsck', ['-fn', disk.file]);
    expect(fsck.code, `${fsck.stdout}${fsck.stderr}`).toBe(0);
    await cleanup();
    const unmount = await mountOrigin();
    expect(mounted([...Object.keys(OLD), 'new.bin'])).toEqual({ ...hashes(OLD), 'new.bin': 'missing' });
    expect(readdirSync(mnt).sort()).toEqual(['change.bin', 'dir', 'keep.txt', 'lost+found']);
    expect(readdirSync(join(mnt, 'dir')).sort()).toEqual(['deep', 'delete.bin']);
    // Read-write: it takes new files as any file system does.
    writeFileSync(join(mnt, 'after.txt'), 'written after the rollback\n');
    await unmount();
    const again = await mountOrigin();
    expect(mounted(['after.txt', 'change.bin'])).toEqual({
      'after.txt': sha256(Buffer.from('written after the rollback\n')),
      'change.bin': sha256(OLD['change.bin'] as Buffer),
    });
    await again();
  });
});
