/**
 * A real file system on an export: nbdfuse exposes the export as a file, mkfs.ext4 formats it,
 * `mount -o loop` mounts it, files are written and unmounted. Then the image is served read-only
 * (-r), mounted again (ro,loop) through nbdfuse, and every file is checked by sha256.
 * Needs root, /dev/fuse and loop devices; mounts and nbdfuse are cleaned up even on failure.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, MiB, ok, pattern, run, sha256, sparseImage, stopQuietly } from '../helpers/clients.ts';
import { type FuseDisk, loopMount, nbdfuse } from '../helpers/mounts.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';

const usable =
  process.getuid?.() === 0 &&
  existsSync('/dev/fuse') &&
  existsSync('/dev/loop-control') &&
  ['nbdfuse', 'fusermount3', 'mkfs.ext4', 'mount', 'losetup', 'e2fsck'].every(hasTool);

/** The files written in the first mount: relative path -> content. */
const FILES: Record<string, Buffer> = {
  'hello.txt': Buffer.from('hello from nbdsnap\n'),
  'random-1m.bin': pattern(MiB, 11),
  'dir/nested/random-5m.bin': pattern(5 * MiB + 123, 12),
  'dir/empty': Buffer.alloc(0),
};

describe.skipIf(!usable)('ext4 through nbdfuse and a loop device', () => {
  const dir = tempDir();
  const image = join(dir.path, 'fs.img');
  const mnt = join(dir.path, 'mnt');
  let srv: RunningServer | undefined;
  /** Undo steps, last first: run by afterEach whatever happened. */
  const undo: (() => Promise<unknown>)[] = [];

  async function cleanup(): Promise<void> {
    while (undo.length > 0) {
      const step = undo.pop() as () => Promise<unknown>;
      await step().catch(() => {});
    }
  }

  async function mountExport(uri: string, fuseDir: string, readOnly: boolean) {
    const disk: FuseDisk = await nbdfuse(uri, fuseDir, { readOnly });
    undo.push(() => disk.unmount());
    return disk;
  }

  beforeAll(() => {
    sparseImage(image, 64 * MiB);
  });

  // After each test, whatever happened: unmount, stop nbdfuse and the server.
  afterEach(async () => {
    await cleanup();
    await stopQuietly(srv);
    srv = undefined;
  });

  afterAll(() => dir.cleanup());

  it('formats, mounts and fills an ext4 file system on a read-write export', async () => {
    srv = await startServer([`fs=${image}`]);
    const disk = await mountExport(srv.uri('fs'), join(dir.path, 'fuse-rw'), false);
    ok(await run('mkfs.ext4', ['-q', '-F', '-L', 'nbdsnap', disk.file]), 'mkfs.ext4');
    const fs = await loopMount(disk.file, mnt);
    undo.push(() => fs.unmount());
    for (const [name, content] of Object.entries(FILES)) {
      mkdirSync(join(mnt, name, '..'), { recursive: true });
      writeFileSync(join(mnt, name), content);
    }
    ok(await run('sync', ['-f', mnt]), 'sync');
    // Unmount in order: the file system, then nbdfuse, then stop the server (which flushes).
    await (undo.pop() as () => Promise<unknown>)();
    await (undo.pop() as () => Promise<unknown>)();
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    // The image file itself now holds a clean ext4 file system.
    const fsck = await run('e2fsck', ['-f', '-n', image]);
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
    expect(fsck.stdout).toMatch(/^nbdsnap: \d+\/\d+ files/m);
  });

  it('serves the image read-only (-r) and mounts it ro,loop with every file intact', async () => {
    srv = await startServer([`fs=${image}`, '-r']);
    const disk = await mountExport(srv.uri('fs'), join(dir.path, 'fuse-ro'), true);
    const fs = await loopMount(disk.file, mnt, ['ro']);
    undo.push(() => fs.unmount());
    const got = Object.fromEntries(Object.keys(FILES).map((name) => [name, sha256(readFileSync(join(mnt, name)))]));
    const want = Object.fromEntries(Object.entries(FILES).map(([name, content]) => [name, sha256(content)]));
    expect(got).toEqual(want);
    // Writes are refused by the read-only mount, and the export refuses them too.
    const touch = await run('touch', [join(mnt, 'new-file')]);
    expect(touch.code).not.toBe(0);
    expect(touch.stderr).toContain('Read-only file system');
    const direct = await run('dd', ['if=/dev/zero', `of=${disk.file}`, 'bs=4096', 'count=1', 'conv=notrunc']);
    expect(direct.code).not.toBe(0);
    await cleanup();
    expect(await srv.stop()).toBe(0);
    srv = undefined;
  });
});
