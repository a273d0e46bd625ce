/**
 * A point-in-time file system: ext4 on the origin (nbdfuse exposes the export as a file,
 * mkfs.ext4 formats it, `mount -o loop` mounts it), files written, unmounted; a snapshot taken;
 * the origin mounted again and its files changed, deleted and added, unmounted; then the snapshot
 * is mounted read-only through nbdfuse (`-o ro,loop,noload`) and every old file is there with its
 * old content (sha256), the new one is not; the origin has the new state. Needs root, /dev/fuse
 * and loop devices; mounts and nbdfuse are torn down even when a step fails.
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
  ['nbdfuse', 'fusermount3', 'mkfs.ext4', 'mount', 'umount', 'losetup'].every(hasTool);

const OLD: Record<string, Buffer> = {
  'keep.txt': Buffer.from('unchanged after the snapshot\n'),
  'change.bin': pattern(3 * MiB + 77, 21),
  'dir/delete.bin': pattern(2 * MiB, 22),
  'dir/deep/append.txt': Buffer.from('first line\n'),
};

describe.skipIf(!usable)('ext4 on the origin, the snapshot mounted read-only', () => {
  const dir = tempDir('nbdsnap-fs-');
  const rig = new Rig(dir.path, {
    devices: { disk: makeSparse(join(dir.path, 'disk.img'), 64 * MiB) },
    stores: [makeSparse(join(dir.path, 'store.img'), 96 * MiB)],
    chunkSize: '64K',
  });
  const mnt = join(dir.path, 'mnt');
  /** Undo steps, last first, run after each test whatever happened. */
  const undo: (() => Promise<unknown>)[] = [];

  async function cleanup(): Promise<void> {
    while (undo.length > 0) await (undo.pop() as () => Promise<unknown>)().catch(() => {});
  }

  let mounts = 0;

  /** Expose `name` with nbdfuse and loop-mount it; the returned function unmounts both, in order. */
  async function mountExport(name: string, options: string[]): Promise<() => Promise<void>> {
    const disk: FuseDisk = await nbdfuse(rig.uri(name), join(dir.path, `fuse-${++mounts}`), {
      readOnly: options.includes('ro'),
    });
    undo.push(() => disk.unmount());
    const fs = await loopMount(disk.file, mnt, options);
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

  it('formats and fills the origin, then takes a snapshot', async () => {
    await rig.start();
    const disk = await nbdfuse(rig.uri('disk'), join(dir.path, 'fuse-mkfs'));
    undo.push(() => disk.unmount());
    ok(await run('mkfs.ext4', ['-q', '-F', '-L', 'origin', disk.file]), 'mkfs.ext4');
    await cleanup();
    const unmount = await mountExport('disk', []);
    for (const [name, content] of Object.entries(OLD)) {
      mkdirSync(join(mnt, name, '..'), { recursive: true });
      writeFileSync(join(mnt, name), content);
    }
    await unmount();
    expect(await rig.createSnapshot('disk', 'before')).toEqual(['disk@before']);
  });

  it('changes the origin: rewrite, delete, append, add', async () => {
    const unmount = await mountExport('disk', []);
    expect(mounted(Object.keys(OLD))).toEqual(hashes(OLD));
    writeFileSync(join(mnt, 'change.bin'), pattern(3 * MiB, 31));
    rmSync(join(mnt, 'dir/delete.bin'));
    writeFileSync(join(mnt, 'dir/deep/append.txt'), 'first line\nsecond line\n');
    writeFileSync(join(mnt, 'new.bin'), pattern(5 * MiB, 32));
    await unmount();
  });

  it('mounts the snapshot ro,loop,noload with the old files intact', async () => {
    const unmount = await mountExport('disk@before', ['ro', 'noload']);
    expect(mounted([...Object.keys(OLD), 'new.bin'])).toEqual({ ...hashes(OLD), 'new.bin': 'missing' });
    expect(readdirSync(mnt).sort()).toEqual(['change.bin', 'dir', 'keep.txt', 'lost+found']);
    await unmount();
    // The origin has the new state.
    const unmountOrigin = await mountExport('disk', ['ro', 'noload']);
    expect(mounted(['keep.txt', 'change.bin', 'dir/delete.bin', 'dir/deep/append.txt', 'new.bin'])).toEqual({
      'keep.txt': sha256(OLD['keep.txt'] as Buffer),
      'change.bin': sha256(pattern(3 * MiB, 31)),
      'dir/delete.bin': 'missing',
      'dir/deep/append.txt': sha256(Buffer.from('first line\nsecond line\n')),
      'new.bin': sha256(pattern(5 * MiB, 32)),
    });
    await unmountOrigin();
    const list = await rig.list();
    expect(list.map((s) => `${s.export}:${s.state}`)).toEqual(['disk@before:valid']);
    expect(list[0]?.chunksInStore).toBeGreaterThan(0);
  });
});
