/**
 * A store whose metadata commit failed: its superblock carries a `failed` flag, since the
 * journal may lack copies made after its last whole batch. At the next start no snapshot of that
 * time may be served as valid: each is recorded invalid (its export answers EIO), the flag is
 * cleared, and the store works again for new snapshots.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { decodeSuperblocks, encodeSuperblock, SUPERBLOCK_COPY } from '../../src/store/superblock.ts';
import { MiB, makeSparse, outcome, Rig, tempDir } from '../helpers/snapshots.ts';

/** Set the `failed` flag the way DiffStore does when a commit fails (next generation, other copy). */
function markStoreFailed(path: string, reason: string): void {
  const fd = openSync(path, 'r+');
  const a = Buffer.alloc(SUPERBLOCK_COPY);
  const b = Buffer.alloc(SUPERBLOCK_COPY);
  readSync(fd, a, 0, a.length, 0);
  readSync(fd, b, 0, b.length, SUPERBLOCK_COPY);
  const read = decodeSuperblocks(a, b);
  if (read.state !== 'valid') throw new Error('no valid superblock');
  const sb = { ...read.sb, generation: read.sb.generation + 1, failed: reason };
  writeSync(fd, encodeSuperblock(sb), 0, SUPERBLOCK_COPY, (sb.generation % 2) * SUPERBLOCK_COPY);
  closeSync(fd);
}

describe('a store that failed to commit', () => {
  const dir = tempDir();
  let rig: Rig | undefined;
  afterEach(async () => {
    await rig?.stop('SIGKILL');
  });

  it('serves no snapshot of that time as valid after a restart, and works again afterwards', async () => {
    const disk = makeSparse(join(dir.path, 'disk.img'), 16 * MiB);
    const store = makeSparse(join(dir.path, 'store.img'), 16 * MiB);
    rig = new Rig(dir.path, { devices: { disk }, stores: [store] });
    await rig.start();
    await rig.createSnapshot('disk', 'before');
    const c = await rig.open('disk');
    await c.write(0, Buffer.alloc(65536, 7));
    await c.flush();
    await rig.stop('SIGTERM');

    markStoreFailed(store, 'test: journal write failed');
    await rig.start();
    const [snap] = await rig.list();
    expect(snap?.state).toBe('invalid');
    expect(snap?.reason).toContain('difference store failed');
    const s = await rig.open('disk@before');
    expect(await outcome(s.read(0, 4096))).toBe('EIO');

    // The flag is cleared once recorded: after another restart the store takes new snapshots.
    await rig.restart('SIGTERM');
    expect((await rig.list())[0]?.state).toBe('invalid');
    await rig.createSnapshot('disk', 'after');
    const d = await rig.open('disk');
    await d.write(0, Buffer.alloc(65536, 9));
    const after = await rig.open('disk@after');
    expect((await after.read(0, 65536)).every((x) => x === 7)).toBe(true);
  });
});
