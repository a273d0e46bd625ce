/**
 * The rollback story on a real file system (the kernel-VM version is in test/kernel): ext4 on
 * the origin (nbdfuse exposes the export as a file, mkfs.ext4 formats it, `mount -o loop`
 * mounts it), files written, unmounted; a snapshot taken; files changed, deleted and added,
 * unmounted; `nbdsnap merge --wait`; then the origin is mounted again (read-write) and holds
 * exactly the original files (sha256) and nothing else, e2fsck finds it clean, and the snapshot
 * is gone. Needs root, /dev/fuse and loop devices; mounts and nbdfuse are torn down even when a
 * step fails.
 */
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { pattern, run, sha256 } from '../helpers/clients.ts';
import { canMountExt4, hashes, Mounts } from '../helpers/mounts.ts';
import { MiB, makeSparse, Rig, tempDir } from '../helpers/snapshots.ts';

const OLD: Record<string, Buffer> = {
  'keep.txt': Buffer.from('unchanged after the snapshot\n'),
  'change.bin': pattern(3 * MiB + 77, 41),
  'dir/delete.bin': pattern(2 * MiB, 42),
  'dir/deep/append.txt': Buffer.from('first line\n'),
};

describe.skipIf(!canMountExt4(['e2fsck']))('ext4 on the origin, rolled back by a merge', () => {
  const dir = tempDir('nbdsnap-merge-fs-');
  const rig = new Rig(dir.path, {
    devices: { disk: makeSparse(join(dir.path, 'disk.img'), 32 * MiB) },
    stores: [makeSparse(join(dir.path, 'store.img'), 64 * MiB)],
    chunkSize: '64K',
  });
  const mnt = join(dir.path, 'mnt');
  const mounts = new Mounts(dir.path, mnt);
  /** Mount the origin read-write; the returned function unmounts it and nbdfuse, in order. */
  const mountOrigin = () => mounts.mount(rig.uri('disk'));

  afterEach(() => mounts.cleanup());
  afterAll(async () => {
    await mounts.cleanup();
    await rig.stop();
    dir.cleanup();
  });

  it('formats and fills the origin, unmounts, takes a snapshot', async () => {
    await rig.start();
    await mounts.makeExt4(rig.uri('disk'), OLD);
    expect(await rig.createSnapshot('disk', 'before')).toEqual(['disk@before']);
  });

  it('changes, deletes and adds files on the origin', async () => {
    const unmount = await mountOrigin();
    expect(mounts.mounted(Object.keys(OLD))).toEqual(hashes(OLD));
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
    const disk = await mounts.expose(rig.uri('disk'));
    const fsck = await run('e2fsck', ['-fn', disk.file]);
    expect(fsck.code, `${fsck.stdout}${fsck.stderr}`).toBe(0);
    await mounts.cleanup();
    const unmount = await mountOrigin();
    expect(mounts.mounted([...Object.keys(OLD), 'new.bin'])).toEqual({ ...hashes(OLD), 'new.bin': 'missing' });
    expect(readdirSync(mnt).sort()).toEqual(['change.bin', 'dir', 'keep.txt', 'lost+found']);
    expect(readdirSync(join(mnt, 'dir')).sort()).toEqual(['deep', 'delete.bin']);
    // Read-write: it takes new files as any file system does.
    writeFileSync(join(mnt, 'after.txt'), 'written after the rollback\n');
    await unmount();
    const again = await mountOrigin();
    expect(mounts.mounted(['after.txt', 'change.bin'])).toEqual({
      'after.txt': sha256(Buffer.from('written after the rollback\n')),
      'change.bin': sha256(OLD['change.bin'] as Buffer),
    });
    await again();
  });
});
