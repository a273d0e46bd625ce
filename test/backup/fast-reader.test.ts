/**
 * The backup's bulk-read connection (fast-reader.ts) against a real `nbdsnap serve`: many reads
 * in flight, of every size and alignment, into fresh or given buffers, byte for byte equal to the
 * model; an error reply rejects its read only, and the connection goes on; and a full and an
 * incremental backup read over several such connections, hashed on the worker thread, restore
 * byte for byte.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/backup.ts';
import { FastReader } from '../../src/backup/fast-reader.ts';
import { restore } from '../../src/backup/restore.ts';
import { verify } from '../../src/backup/verify.ts';
import { tempDir } from '../helpers/server.ts';
import { BackupRig, BLOCK, firstDiff, MiB, nbdsnap, prng, randomBuffer } from './rig.ts';

const SIZE = 8 * MiB;
const dir = tempDir('nbdsnap-backup-fast-');
const rnd = prng(4242);
const rig = new BackupRig(dir.path, { size: SIZE, content: randomBuffer(rnd, SIZE) });
const file = (n: string) => join(dir.path, n);

beforeAll(async () => {
  await rig.start();
  await rig.snapshot('a');
}, 60_000);
afterAll(async () => {
  await rig.stop();
  dir.cleanup();
});

describe('fast reader', () => {
  it('answers many reads in flight, of any size and alignment, exactly', async () => {
    const r = (await FastReader.open(rig.uri('disk@a'))) as FastReader;
    expect(r).toBeDefined();
    expect(r.size).toBe(SIZE);
    const want = rig.snap('a');
    const reads: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const length = 1 + Math.floor(rnd() * (i % 3 === 0 ? MiB : 70_000));
      const offset = Math.floor(rnd() * (SIZE - length));
      const into = i % 2 === 0 ? Buffer.alloc(length + 100, 0xee) : undefined;
      reads.push(
        r.read(offset, length, into).then((got) => {
          expect(got.length).toBe(length);
          expect(got.equals(want.subarray(offset, offset + length))).toBe(true);
          if (into !== undefined && length > 0) expect(got.buffer).toBe(into.buffer);
        }),
      );
    }
    await Promise.all(reads);
    await r.close();
  });

  it('an error reply fails that read only', async () => {
    const r = (await FastReader.open(rig.uri('disk@a'))) as FastReader;
    const bad = r.read(SIZE - 512, 4096);
    const good = r.read(4096, 8192);
    await expect(bad).rejects.toThrow(/EINVAL|EIO|server error/);
    expect((await good).equals(rig.snap('a').subarray(4096, 4096 + 8192))).toBe(true);
    expect((await r.read(0, 512)).equals(rig.snap('a').subarray(0, 512))).toBe(true);
    await r.close();
  });

  it('a missing export is refused at open', async () => {
    await expect(FastReader.open(rig.uri('disk@nope'))).rejects.toThrow(/disk@nope/);
  });
});

describe('backups over several fast connections, hashed on the worker thread', () => {
  it('full, then incremental with trimming: restore byte for byte', async () => {
    const full = file('a.nbk');
    await backup({ source: rig.uri('disk@a'), file: full, connections: 3, depth: 5, hashInWorkerFrom: 0 });
    for (let i = 0; i < 20; i++) {
      const len = 1 + Math.floor(rnd() * 200_000);
      await rig.write(Math.floor(rnd() * (SIZE - len)), randomBuffer(rnd, len));
    }
    await rig.write(5 * BLOCK + 1024, randomBuffer(rnd, 512)); // one sector: trimmed to it
    await rig.snapshot('b');
    const inc = file('b.nbk');
    const res = await backup({
      source: rig.uri('disk@b'),
      file: inc,
      since: full,
      connections: 3,
      hashInWorkerFrom: 0,
    });
    expect(res.trimmedBytes).toBeGreaterThan(0);
    await restore({ files: [full, inc], target: file('t.img'), journal: file('t.undo') });
    expect(firstDiff(readFileSync(file('t.img')), rig.snap('b'))).toBeUndefined();
  });

  it('the CLI takes --connections and --depth, and refuses values out of range', async () => {
    const bad = await nbdsnap(['backup', rig.uri('disk@b'), file('x.nbk'), '--connections', '0', '--progress', 'none']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--connections 0 must be a whole number from 1 to 256/);
    const out = file('b-cli.nbk');
    const r = await nbdsnap([
      'backup',
      rig.uri('disk@b'),
      out,
      '--connections',
      '3',
      '--depth',
      '2',
      '--progress',
      'none',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect((await verify([out])).length).toBe(1);
    await restore({ files: [out], target: file('c.img'), journal: file('c.undo') });
    expect(firstDiff(readFileSync(file('c.img')), rig.snap('b'))).toBeUndefined();
  });
});
