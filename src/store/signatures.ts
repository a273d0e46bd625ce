/**
 * Recognised signatures at the start of a range, the way blkid/wipefs find them: what a store
 * range must not be formatted over without `--force` (mkfs and pvcreate refuse the same way).
 * Pure: give it the first SIGNATURE_BYTES of the range (fewer if the range is shorter).
 */
import { decodeLabelArea, LABEL_AREA, LABEL_COPY } from './label.ts';
import { BLOCK_MAGIC } from './records.ts';

/** How much of the start of a range `findSignature` looks at. */
export const SIGNATURE_BYTES = LABEL_AREA + 4096;

export interface Signature {
  /** Short name: 'ext4', 'xfs', 'btrfs', 'lvm2', 'swap', 'luks', 'gpt', 'mbr', 'nbdsnap'. */
  type: string;
  /** For messages: "an ext2/3/4 filesystem". */
  what: string;
  /** nbdsnap stores: the store's uuid, when its label is readable. */
  uuid?: string;
}

const at = (b: Buffer, offset: number, text: string): boolean =>
  b.length >= offset + text.length && b.toString('latin1', offset, offset + text.length) === text;

/** The signature found at the start of a range, or undefined. */
export function findSignature(head: Buffer): Signature | undefined {
  const label = decodeLabelArea(head);
  if (label.state === 'valid') {
    const l = label.label;
    return {
      type: 'nbdsnap',
      what: `${l.kind} nbdsnap store ${l.uuid} (its range ${l.index})`,
      uuid: l.uuid,
    };
  }
  if (label.state === 'version')
    return { type: 'nbdsnap', what: `an nbdsnap store of format version ${label.version}` };
  if (label.state === 'unreadable') return { type: 'nbdsnap', what: 'an nbdsnap store whose label is unreadable' };
  // A label whose headers were damaged in both copies: its JSON is still there.
  if (at(head, 32, '{"kind":"') || at(head, LABEL_COPY + 32, '{"kind":"'))
    return { type: 'nbdsnap', what: 'an nbdsnap store whose label is unreadable (both copies damaged)' };
  // Range 0 of a store whose label area was wiped: its journal's first block follows it.
  if (
    head.length >= LABEL_AREA + 8 &&
    head.readUInt32LE(LABEL_AREA) === BLOCK_MAGIC &&
    head.readUInt32LE(LABEL_AREA + 4) === 0
  )
    return {
      type: 'nbdsnap',
      what: 'an nbdsnap store whose label is unreadable (its journal follows a blank label area)',
    };
  if (at(head, 0, 'LUKS\xba\xbe')) return { type: 'luks', what: 'a LUKS encrypted volume' };
  if (at(head, 0, 'XFSB')) return { type: 'xfs', what: 'an XFS filesystem' };
  if (at(head, 65600, '_BHRfS_M')) return { type: 'btrfs', what: 'a Btrfs filesystem' };
  if (head.length >= 1082 && head.readUInt16LE(1080) === 0xef53)
    return { type: 'ext4', what: 'an ext2/3/4 filesystem' };
  for (let sector = 0; sector < 4; sector++) {
    if (at(head, sector * 512, 'LABELONE')) return { type: 'lvm2', what: 'an LVM2 physical volume' };
  }
  // Swap's signature ends its first page: 4 KiB pages, or larger ones.
  for (const page of [4096, 8192, 16384, 65536]) {
    if (at(head, page - 10, 'SWAPSPACE2') || at(head, page - 10, 'SWAP-SPACE'))
      return { type: 'swap', what: 'a swap area' };
  }
  if (at(head, 512, 'EFI PART')) return { type: 'gpt', what: 'a GPT partition table' };
  if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa)
    return { type: 'mbr', what: 'an MBR partition table or boot sector' };
  return undefined;
}
