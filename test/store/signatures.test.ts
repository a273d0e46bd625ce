/**
 * Signature recognition, without a server: crafted buffers for each signature (and nothing found
 * in zeros, or where a signature is one byte off), and a real `mkfs.ext4` image.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeLabel, LABEL_AREA, LABEL_COPY } from '../../src/store/label.ts';
import { encodeBlockHeader } from '../../src/store/records.ts';
import { findSignature, SIGNATURE_BYTES } from '../../src/store/signatures.ts';
import { newSuperblock } from '../../src/store/superblock.ts';
import { hasTool } from '../helpers/clients.ts';
import { tempDir } from '../helpers/server.ts';

const head = (...marks: [number, Buffer | string][]): Buffer => {
  const b = Buffer.alloc(SIGNATURE_BYTES);
  for (const [at, what] of marks) (typeof what === 'string' ? Buffer.from(what, 'latin1') : what).copy(b, at);
  return b;
};

describe('findSignature', () => {
  const cases: [string, [number, Buffer | string][], string][] = [
    ['ext2/3/4', [[1080, Buffer.from([0x53, 0xef])]], 'ext4'],
    ['XFS', [[0, 'XFSB']], 'xfs'],
    ['Btrfs', [[65600, '_BHRfS_M']], 'btrfs'],
    ['LVM2 in sector 1', [[512, 'LABELONE']], 'lvm2'],
    ['LVM2 in sector 3', [[1536, 'LABELONE']], 'lvm2'],
    ['swap', [[4086, 'SWAPSPACE2']], 'swap'],
    ['old swap', [[4086, 'SWAP-SPACE']], 'swap'],
    ['LUKS', [[0, 'LUKS\xba\xbe']], 'luks'],
    [
      'GPT (with its protective MBR)',
      [
        [512, 'EFI PART'],
        [510, Buffer.from([0x55, 0xaa])],
      ],
      'gpt',
    ],
    ['MBR', [[510, Buffer.from([0x55, 0xaa])]], 'mbr'],
  ];
  for (const [what, marks, type] of cases) {
    it(`finds ${what}`, () => {
      expect(findSignature(head(...marks))?.type).toBe(type);
    });
  }

  it('finds nothing in zeros, nor a signature one byte off its place', () => {
    expect(findSignature(Buffer.alloc(SIGNATURE_BYTES))).toBeUndefined();
    expect(findSignature(head([1081, Buffer.from([0x53, 0xef])]))).toBeUndefined();
    expect(findSignature(head([1, 'XFSB']))).toBeUndefined();
    expect(findSignature(head([65601, '_BHRfS_M']))).toBeUndefined();
    expect(findSignature(head([4087, 'SWAPSPACE2']))).toBeUndefined();
  });

  it('names an nbdsnap store by its uuid, and one whose label area was wiped by its journal', () => {
    const sb = newSuperblock('persistent', 65536, [{ path: '/s', start: 0, length: 1 << 24 }], 0);
    const got = findSignature(head([0, encodeLabel(sb)]));
    expect(got).toMatchObject({ type: 'nbdsnap', uuid: sb.uuid });
    expect(got?.what).toContain(sb.uuid);
    // Copy B only (copy A damaged): still the store.
    expect(findSignature(head([LABEL_COPY, encodeLabel(sb)]))?.uuid).toBe(sb.uuid);
    // Both magics damaged: the label's JSON still names it.
    const damaged = head([0, encodeLabel(sb)], [LABEL_COPY, encodeLabel(sb)], [0, 'X'], [LABEL_COPY, 'X']);
    expect(findSignature(damaged)).toMatchObject({ type: 'nbdsnap', what: expect.stringMatching(/unreadable/) });
    const wiped = head([LABEL_AREA, encodeBlockHeader({ index: 0, next: 1, firstSeq: 1 })]);
    expect(findSignature(wiped)).toMatchObject({ type: 'nbdsnap', what: expect.stringMatching(/unreadable/) });
  });

  it('works on a head shorter than SIGNATURE_BYTES (a small range)', () => {
    expect(findSignature(Buffer.from('XFSB'))?.type).toBe('xfs');
    expect(findSignature(Buffer.alloc(100))).toBeUndefined();
  });
});

describe.skipIf(!hasTool('mkfs.ext4'))('a real mkfs.ext4 image', () => {
  const dir = tempDir('nbdsnap-sig-');
  afterAll(() => dir.cleanup());

  it('is recognised as ext2/3/4', () => {
    const img = join(dir.path, 'ext4.img');
    execFileSync('mkfs.ext4', ['-q', '-F', img, '8M'], { stdio: 'ignore' });
    const buf = readFileSync(img).subarray(0, SIGNATURE_BYTES);
    expect(findSignature(buf)).toMatchObject({ type: 'ext4', what: 'an ext2/3/4 filesystem' });
  });
});
