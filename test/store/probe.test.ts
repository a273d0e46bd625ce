/**
 * What a range holds (probe.ts), on real files, without a server: "blank" means the whole range
 * reads as zeros (sparse or written), whatever lies outside the range; one non-zero byte anywhere
 * inside, even past the label area and far from the start, is data; a label and a signature are
 * named.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeLabelPair } from '../../src/store/label.ts';
import { probeRange } from '../../src/store/probe.ts';
import { newSuperblock } from '../../src/store/superblock.ts';
import { writeAt } from '../helpers/clients.ts';
import { MiB, makeSparse, tempDir } from '../helpers/snapshots.ts';

const dir = tempDir('nbdsnap-probe-');
afterAll(() => dir.cleanup());
const file = (name: string) => join(dir.path, name);

describe('probeRange', () => {
  it('a new sparse file, and a file of written zeros, are blank', async () => {
    const sparse = makeSparse(file('sparse.img'), 256 * MiB);
    expect(await probeRange({ path: sparse, start: 0, length: 256 * MiB })).toEqual({ kind: 'blank' });
    writeFileSync(file('zeros.img'), Buffer.alloc(8 * MiB));
    expect(await probeRange({ path: file('zeros.img'), start: 0, length: 8 * MiB })).toEqual({ kind: 'blank' });
  });

  it('one non-zero byte anywhere in the range is data; outside the range it does not count', async () => {
    const f = makeSparse(file('one.img'), 64 * MiB);
    writeAt(f, 48 * MiB - 1, Buffer.from([0x80]));
    expect(await probeRange({ path: f, start: 0, length: 64 * MiB })).toEqual({ kind: 'data' });
    expect(await probeRange({ path: f, start: 0, length: 48 * MiB - 1 })).toEqual({ kind: 'blank' });
    expect(await probeRange({ path: f, start: 48 * MiB, length: 16 * MiB })).toEqual({ kind: 'blank' });
    expect(await probeRange({ path: f, start: 32 * MiB, length: 16 * MiB })).toEqual({ kind: 'data' });
  });

  it('data in a written (not sparse) file, after many zeros', async () => {
    const b = Buffer.alloc(8 * MiB);
    b[b.length - 1] = 1;
    writeFileSync(file('tail.img'), b);
    expect(await probeRange({ path: file('tail.img'), start: 0, length: 8 * MiB })).toEqual({ kind: 'data' });
  });

  it('a label is read, a signature named, a missing file is an error naming the range', async () => {
    const f = makeSparse(file('label.img'), 4 * MiB);
    const sb = newSuperblock('persistent', 65536, [{ path: f, start: 0, length: 4 * MiB }], 0);
    writeAt(f, 0, encodeLabelPair(sb));
    expect(await probeRange({ path: f, start: 0, length: 4 * MiB })).toMatchObject({
      kind: 'label',
      label: { uuid: sb.uuid, index: 0 },
    });
    const x = makeSparse(file('xfs.img'), MiB);
    writeAt(x, 0, Buffer.from('XFSB'));
    expect(await probeRange({ path: x, start: 0, length: MiB })).toMatchObject({
      kind: 'signature',
      signature: { type: 'xfs' },
    });
    await expect(probeRange({ path: file('nope.img'), start: 0, length: MiB })).rejects.toThrow(/nope\.img:0\+2048/);
  });
});
