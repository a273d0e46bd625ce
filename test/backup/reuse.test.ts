/**
 * A snapshot name taken again after its change-tracking point was forgotten: `mon` backed up,
 * deleted, its point forgotten (`cbt.forget`), writes, a new `mon` taken (and deleted in turn,
 * its point kept by the default `--cbt-keep-deleted 1`). `qemu:dirty-bitmap:mon` now counts from
 * the new point, so `backup --since mon.nbk` would miss the writes before the new `mon`: it must
 * be refused ("take a full backup"), no file written, through the API and the CLI. `--since mon`
 * (a name) records the new point as FROM, so a restore of mon.nbk + that file is refused by the
 * chain check. The server lists each bitmap's point as `x-nbdsnap:bitmap-point=NAME@SEQ`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/backup.ts';
import { BackupReader } from '../../src/backup/reader.ts';
import { restore } from '../../src/backup/restore.ts';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { call } from '../../src/control/client.ts';
import { tempDir } from '../helpers/server.ts';
import { BackupRig, BLOCK, firstDiff, MiB, nbdsnap, prng, randomBuffer } from './rig.ts';

const SIZE = 8 * MiB;
const dir = tempDir('nbdsnap-backup-reuse-');
const rig = new BackupRig(dir.path, { size: SIZE });
const rnd = prng(1201);
const file = (n: string) => join(dir.path, n);
const MON = file('mon.nbk');

interface Point {
  name: string;
  seq: number;
  snapshot: boolean;
}
const points = async (): Promise<Point[]> =>
  (await call(rig.control, 'cbt.points', { device: 'disk' })) as unknown as Point[];
const seqOf = async (name: string): Promise<number> => {
  const p = (await points()).find((x) => x.name === name);
  if (p === undefined) throw new Error(`no point ${name}`);
  return p.seq;
};

let oldMon = 0;
let newMon = 0;

beforeAll(async () => {
  await rig.start();
  await rig.write(0, randomBuffer(rnd, 2 * MiB));
  await rig.snapshot('mon');
  oldMon = await seqOf('mon');
  await backup({ source: rig.uri('disk@mon'), file: MON });
  await rig.deleteSnapshot('mon');
  await call(rig.control, 'cbt.forget', { device: 'disk', name: 'mon' });
  // the changes a backup --since mon.nbk must not miss: before the new mon
  for (let b = 0; b < SIZE / BLOCK; b += 3) await rig.write(b * BLOCK + 512, randomBuffer(rnd, 4096));
  await rig.snapshot('mon');
  newMon = await seqOf('mon');
}, 120_000);

afterAll(async () => {
  await rig.stop();
  dir.cleanup();
});

describe('backup --since a file whose snapshot name was taken again', () => {
  it('the server lists the point each dirty bitmap counts from', async () => {
    expect(newMon).toBeGreaterThan(oldMon);
    await rig.write(5 * BLOCK, randomBuffer(rnd, 1000));
    await rig.snapshot('tue');
    const facts = await NbdClient.listMetaContexts(rig.uri('disk@tue'), ['x-nbdsnap:']);
    expect(facts).toContain(`x-nbdsnap:bitmap-point=mon@${newMon}`);
  });

  it('refused while the new mon exists', async () => {
    const out = file('tue-a.nbk');
    await expect(backup({ source: rig.uri('disk@tue'), file: out, since: MON })).rejects.toThrow(
      /not the snapshot .*mon\.nbk was taken from/,
    );
    expect(existsSync(out)).toBe(false);
  });

  it('refused once the new mon is deleted too (only its point left): API and CLI', async () => {
    await rig.deleteSnapshot('mon'); // its point is kept (--cbt-keep-deleted 1)
    expect((await points()).find((p) => p.name === 'mon')).toEqual({ name: 'mon', seq: newMon, snapshot: false });
    const out = file('tue-b.nbk');
    const err = await backup({ source: rig.uri('disk@tue'), file: out, since: MON }).catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'NbdsnapError', code: 'BAD_ARGUMENT' });
    expect(String((err as Error).message)).toMatch(/point of that name is \d+, the file's is \d+.*take a full backup/);
    expect(existsSync(out)).toBe(false);
    const r = await nbdsnap(['backup', rig.uri('disk@tue'), out, '--since', MON, '--progress', 'none']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/take a full backup/);
    expect(existsSync(out)).toBe(false);
  });

  it('--since the name records the new point, and a chain from mon.nbk is refused', async () => {
    const out = file('tue-name.nbk');
    await backup({ source: rig.uri('disk@tue'), file: out, since: 'mon' });
    const r = await BackupReader.open(out);
    await r.close();
    expect(r.header.fromName).toBe('mon');
    expect(r.header.fromPoint).toBe(newMon);
    await expect(restore({ files: [MON, out], target: file('t.img'), journal: file('t.undo') })).rejects.toThrow(
      /does not follow/,
    );
    expect(existsSync(file('t.img'))).toBe(false);
  });

  it('a full backup of tue, then an incremental since it, restore byte for byte', async () => {
    const full = file('tue-full.nbk');
    await backup({ source: rig.uri('disk@tue'), file: full });
    await rig.write(3 * MiB + 17, randomBuffer(rnd, 300_000));
    await rig.snapshot('wed');
    const inc = file('wed.nbk');
    await backup({ source: rig.uri('disk@wed'), file: inc, since: full });
    await restore({ files: [full, inc], target: file('w.img'), journal: file('w.undo') });
    expect(firstDiff(readFileSync(file('w.img')), rig.snap('wed'))).toBeUndefined();
  });
});
