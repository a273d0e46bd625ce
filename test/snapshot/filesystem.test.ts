/**
 * A point-in-time file system: ext4 on the origin (nbdfuse exposes the export as a file,
 * mkfs.ext4 formats it, `mount -o loop` mounts it), files written, unmounted; a snapshot taken;
 * the origin mounted again and its files changed, deleted and added, unmounted; then the snapshot
 * is mounted read-only through nbdfuse (`-o ro,loop,noload`) and every old file is there with its
 * old content (sha256), the new one is not; the origin has the new state. Needs root, /dev/fuse
 * and loop devices; mounts and nbdfuse are torn down even when a step fails.
 */
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { pattern, sha256 } from '../helpers/clients.ts';
import { canMountExt4, hashes, Mounts } from '../helpers/mounts.ts';
import { MiB, makeSparse, Rig, tempDir } from '../helpers/snapshots.ts';

const OLD: Record<string, Buffer> = {
  'keep.txt': Buffer.from('unchanged after the snapshot\n'),
  'change.bin': pattern(3 * MiB + 77, 21),
  'dir/delete.bin': pattern(2 * MiB, 22),
  'dir/deep/append.txt': Buffer.from('first line\n'),
};

describe.skipIf(!canMountExt4())('ext4 on the origin, the snapshot mounted read-only', () => {
  const dir = tempDir('nbdsnap-fs-');
  const rig = new Rig(dir.path, {
    devices: { disk: makeSparse(join(dir.path, 'disk.img'), 64 * MiB) },
    stores: [makeSparse(join(dir.path, 'store.img'), 96 * MiB)],
    chunkSize: '64K',
  });
  const mnt = join(dir.path, 'mnt');
  const mounts = new Mounts(dir.path, mnt);
  /** Expose `name` with nbdfuse and loop-mount it; the returned function unmounts both, in order. */
  const mountExport = (name: string, options: string[]) => mounts.mount(rig.uri(name), options);

  afterEach(() => mounts.cleanup());
  afterAll(async () => {
    await mounts.cleanup();
    await rig.stop();
    dir.cleanup();
  });

  it('formats and fills the origin, then takes a snapshot', async () => {
    await rig.start();
    await mounts.makeExt4(rig.uri('disk'), OLD);
    expect(await rig.createSnapshot('disk', 'before')).toEqual(['disk@before']);
  });

  it('changes the origin: rewrite, delete, append, add', async () => {
    const unmount = await mountExport('disk', []);
    expect(mounts.mounted(Object.keys(OLD))).toEqual(hashes(OLD));
    writeFileSync(join(mnt, 'change.bin'), pattern(3 * MiB, 31));
    rmSync(join(mnt, 'dir/delete.bin'));
    writeFileSync(join(mnt, 'dir/deep/append.txt'), 'first line\nsecond line\n');
    writeFileSync(join(mnt, 'new.bin'), pattern(5 * MiB, 32));
    await unmount();
  });

  it('mounts the snapshot ro,loop,noload with the old files intact', async () => {
    const unmount = await mountExport('disk@before', ['ro', 'noload']);
    expect(mounts.mounted([...Object.keys(OLD), 'new.bin'])).toEqual({ ...hashes(OLD), 'new.bin': 'missing' });
    expect(readdirSync(mnt).sort()).toEqual(['change.bin', 'dir', 'keep.txt', 'lost+found']);
    await unmount();
    // The origin has the new state.
    const unmountOrigin = await mountExport('disk', ['ro', 'noload']);
    expect(mounts.mounted(['keep.txt', 'change.bin', 'dir/delete.bin', 'dir/deep/append.txt', 'new.bin'])).toEqual({
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
