/**
 * Change tracking through the control socket: writes and `cbt mark-dirty` show up as changed
 * ranges since a snapshot (rounded to tracking blocks), and a range outside the device is refused.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MiB, makeSparse, Rig, tempDir } from '../helpers/snapshots.ts';

interface Changed {
  ranges: { offset: number; length: number }[];
  changedBytes: number;
  blockSize: number;
}

describe('change tracking', () => {
  const dir = tempDir();
  const disk = makeSparse(join(dir.path, 'disk.img'), 16 * MiB);
  const store = makeSparse(join(dir.path, 'store.img'), 16 * MiB);
  const rig = new Rig(dir.path, { devices: { disk }, stores: [store] });
  afterAll(async () => {
    await rig.stop('SIGKILL');
    dir.cleanup();
  });

  it('reports writes and marked ranges since a snapshot, and refuses a range outside the device', async () => {
    await rig.start();
    await rig.createSnapshot('disk', 's1');
    const c = await rig.open('disk');
    await c.write(3 * MiB + 100, Buffer.alloc(10, 1));
    await rig.ctl('cbt.markDirty', { device: 'disk', offset: MiB, length: 4096 });
    const r = await rig.ctl<Changed>('cbt.changed', { device: 'disk', from: 's1' });
    expect(r.blockSize).toBe(65536);
    expect(r.ranges).toEqual([
      { offset: MiB, length: 65536 },
      { offset: 3 * MiB, length: 65536 },
    ]);
    expect(r.changedBytes).toBe(2 * 65536);
    await expect(rig.ctl('cbt.markDirty', { device: 'disk', offset: 16 * MiB, length: 1 })).rejects.toThrow(
      /not inside disk/,
    );
    const cli = await rig.cli(['cbt', 'mark-dirty', 'disk', '8M', '1']);
    expect(cli.code).toBe(0);
    const after = await rig.ctl<Changed>('cbt.changed', { device: 'disk', from: 's1' });
    expect(after.ranges).toContainEqual({ offset: 8 * MiB, length: 65536 });
  });
});
