/**
 * Range 0's label: the store's record (what the version-1 superblock was). Besides what every
 * range's label says (label.ts), it lists every range of the store by index (path, start, length,
 * id), so ranges appended at run time are found again on restart, the journal's first block, and
 * a `failed` flag. This file builds the record and the labels of the other ranges from it; the
 * byte layout is label.ts's. Pure: no I/O here.
 */
import { randomUUID } from 'node:crypto';
import { NbdsnapError } from '../errors.ts';
import {
  decodeLabels,
  encodeLabel,
  LABEL_AREA,
  LABEL_COPY,
  type Label,
  type RecordedRange,
  rangeSpec,
  type StoreKind,
} from './label.ts';
import type { StoreRange } from './space.ts';

export const SUPERBLOCK_COPY = LABEL_COPY;
export const SUPERBLOCK_AREA = LABEL_AREA;

/** Range 0's label. */
export interface Superblock extends Label {
  ranges: RecordedRange[];
}

/** The record of a new store over `ranges` (range 0 first), before any copy is written. */
export function newSuperblock(
  kind: StoreKind,
  chunkSize: number,
  ranges: StoreRange[],
  firstJournalSlot?: number,
): Superblock {
  const first = ranges[0] as StoreRange;
  const ids = ranges.map(() => randomUUID());
  return {
    generation: 1,
    kind,
    uuid: randomUUID(),
    index: 0,
    id: ids[0] as string,
    start: first.start,
    length: first.length,
    chunkSize,
    ranges: ranges.map((r, i) => ({ path: r.path, start: r.start, length: r.length, id: ids[i] as string })),
    ...(firstJournalSlot === undefined ? {} : { firstJournalSlot }),
  };
}

/** The label of range `index` > 0 as the record describes it (generation 1: a first labelling). */
export function rangeLabel(sb: Superblock, index: number): Label {
  const r = sb.ranges[index];
  if (r === undefined || index === 0) throw new NbdsnapError('EINVAL', `store range ${index} is not recorded`);
  const first = sb.ranges[0] as RecordedRange;
  return {
    generation: 1,
    kind: sb.kind,
    uuid: sb.uuid,
    index,
    id: r.id,
    start: r.start,
    length: r.length,
    chunkSize: sb.chunkSize,
    first: { path: first.path, start: first.start, length: first.length },
  };
}

/** Range 0's label as a store record: a CORRUPT error if it is not one. */
export function asSuperblock(label: Label, where: StoreRange): Superblock {
  if (label.index !== 0 || label.ranges === undefined) {
    throw new NbdsnapError('CORRUPT', `store range ${rangeSpec(where)} does not hold its store's record`);
  }
  return label as Superblock;
}

export const encodeSuperblock = (sb: Superblock): Buffer => encodeLabel(sb);

export type SuperblockRead = { state: 'blank' } | { state: 'valid'; sb: Superblock; slot: 0 | 1 };

/**
 * Range 0's two copies. Neither has the magic: 'blank' (no label; whether the range is blank in
 * the sense of all zeros is probe.ts's question). Otherwise the record, or a CORRUPT error.
 */
export function decodeSuperblocks(a: Buffer, b: Buffer): SuperblockRead {
  const read = decodeLabels(a, b);
  switch (read.state) {
    case 'none':
      return { state: 'blank' };
    case 'valid':
      if (read.label.index !== 0 || read.label.ranges === undefined)
        throw new NbdsnapError(
          'CORRUPT',
          `this is range ${read.label.index} of store ${read.label.uuid}, not its first`,
        );
      return { state: 'valid', sb: read.label as Superblock, slot: read.slot };
    case 'version':
      throw new NbdsnapError('CORRUPT', versionMessage(read.version));
    case 'unreadable':
      throw new NbdsnapError(
        'CORRUPT',
        `the store's label is unreadable (${read.why}); refusing to use or reformat it`,
      );
  }
}

export const versionMessage = (version: number): string =>
  version === 1
    ? 'the store is in format version 1 (before range labels); this nbdsnap reads version 2 and does not convert it: keep the older nbdsnap for it, or format the range anew (nbdsnap store format --force)'
    : `the store is in format version ${version}; this nbdsnap reads version 2`;
