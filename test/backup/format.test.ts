/**
 * The pure parts of backups, without a server: header and end-marker round trips, the CRC chain
 * (a swapped or dropped record fails even though each record is intact), the plan from block
 * status, sheepdog trimming, sample choice and undo-journal pieces.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BACKUP_MAGIC,
  type BackupHeader,
  decodeEnd,
  decodeHeader,
  encodeEnd,
  encodeHeader,
  encodeRecord,
  initialCrc,
  PIECE,
  RecordType,
} from '../../src/backup/format.ts';
import { chooseSamples, planRanges, trimUnchanged } from '../../src/backup/plan.ts';
import { BackupReader } from '../../src/backup/reader.ts';
import { journalPieces } from '../../src/backup/undo.ts';
import { PendingFile } from '../../src/backup/writer.ts';
import { tempDir } from '../helpers/server.ts';

const dir = tempDir('nbdsnap-backup-format-');
afterAll(() => dir.cleanup());

const header: BackupHeader = {
  version: 1,
  kind: 'incremental',
  deviceSize: 4 * PIECE,
  blockSize: 65536,
  sectorSize: 512,
  toPoint: 7,
  toCreated: 1_790_000_000_123,
  fromPoint: 5,
  fromCreated: 1_790_000_000_000,
  startedAt: 1_790_000_001_000,
  backupId: '00112233445566778899aabbccddeeff',
  device: 'disk',
  toName: 'nightly-2',
  fromName: 'nightly-1',
  generation: '2b1f6c2e-1111-4222-8333-444455556666',
  source: 'nbd://127.0.0.1:10809/disk@nightly-2',
};

describe('format', () => {
  it('chains CRC-32 (IEEE, as zlib computes it), as files already written need', () => {
    expect(initialCrc(BACKUP_MAGIC)).toBe(0x49212396);
    const { bytes, crc } = encodeRecord(
      { type: RecordType.DATA, offset: 512, length: 9, payload: Buffer.from('123456789') },
      initialCrc(BACKUP_MAGIC),
    );
    expect(crc).toBe(crc32(bytes.subarray(0, bytes.length - 4), 0x49212396));
    expect(bytes.readUInt32LE(bytes.length - 4)).toBe(crc);
    expect(crc32(Buffer.from('123456789'))).toBe(0xcbf43926);
    expect(crc).toBe(0xa32cf6de);
  });

  it('round-trips the header and the end marker', () => {
    expect(decodeHeader(encodeHeader(header))).toEqual(header);
    expect(decodeHeader(encodeHeader({ ...header, kind: 'full', fromName: '', fromPoint: 0 })).kind).toBe('full');
    const sha = Buffer.alloc(32, 7);
    const totals = { records: 3, dataBytes: 4096, zeroBytes: 512, discardBytes: 0, samples: 1 };
    expect(decodeEnd(encodeEnd(totals, sha))).toEqual({ totals, sha256: sha });
    const future = encodeHeader(header);
    future.writeUInt32LE(2, 0);
    expect(() => decodeHeader(future)).toThrow(/format version 2/);
  });

  it('chains record checksums: swapping two intact records is detected', async () => {
    const path = join(dir.path, 'a.nbk');
    const p = await PendingFile.create(path, BACKUP_MAGIC);
    await p.writer.add({ type: RecordType.HEAD, offset: 0, length: header.deviceSize, payload: encodeHeader(header) });
    const a = Buffer.alloc(512, 1);
    const b = Buffer.alloc(512, 2);
    await p.writer.add({ type: RecordType.DATA, offset: 0, length: 512, payload: a });
    await p.writer.add({ type: RecordType.DATA, offset: 1024, length: 512, payload: b });
    await p.commit();
    const r = await BackupReader.open(path);
    expect((await r.readAll()).ranges).toEqual([
      [0, 512],
      [1024, 512],
    ]);
    // swap the two DATA records (same size), each still well formed
    const bytes = readFileSync(path);
    const rec = 24 + 512 + 4;
    const first = bytes.indexOf(Buffer.from('DATA'));
    const swapped = Buffer.concat([
      bytes.subarray(0, first),
      bytes.subarray(first + rec, first + 2 * rec),
      bytes.subarray(first, first + rec),
      bytes.subarray(first + 2 * rec),
    ]);
    writeFileSync(path, swapped);
    await expect((await BackupReader.open(path)).readAll()).rejects.toThrow(/checksum mismatch in DATA/);
  });
});

describe('plan', () => {
  const M = PIECE;
  it('intersects allocation with the dirty map: DATA pieces, ZERO, DISC, HOLE-without-ZERO as data', () => {
    const allocation = [
      { offset: 0, length: M + 4096, flags: 0 },
      { offset: M + 4096, length: 4096, flags: 2 },
      { offset: M + 8192, length: M - 8192, flags: 3 },
      { offset: 2 * M, length: 2 * M, flags: 1 },
    ];
    const dirty = [
      { offset: 0, length: 65536, flags: 0 },
      { offset: 65536, length: 3 * M - 65536, flags: 1 },
      { offset: 3 * M, length: M, flags: 0 },
    ];
    const plan = planRanges(4 * M, allocation, dirty);
    expect(plan.items).toEqual([
      { kind: 'data', offset: 65536, length: M - 65536 },
      { kind: 'data', offset: M, length: 4096 },
      { kind: 'zero', offset: M + 4096, length: 4096 },
      { kind: 'disc', offset: M + 8192, length: M - 8192 },
      { kind: 'data', offset: 2 * M, length: M },
    ]);
    expect(plan.clean).toEqual([
      [0, 65536],
      [3 * M, M],
    ]);
    expect(plan.totalBytes).toBe(3 * M - 65536);
    expect(planRanges(4 * M, allocation).totalBytes).toBe(4 * M);
  });

  it('trims unchanged sectors at both ends (device-aligned), or drops an unchanged piece', () => {
    const before = Buffer.alloc(8192, 9);
    const now = Buffer.from(before);
    expect(trimUnchanged(0, now, before)).toBeUndefined();
    now[1500] = 0;
    now[5000] = 0;
    expect(trimUnchanged(0, now, before)).toEqual({ start: 1024, end: 5120 });
    // the piece starts mid-sector: sector boundaries are the device's
    expect(trimUnchanged(100, now, before)).toEqual({ start: 1436, end: 5020 });
  });

  it('samples whole clean blocks, evenly and deterministically', () => {
    const clean: [number, number][] = [
      [0, 10 * 65536 + 100],
      [20 * 65536 - 5, 65536 + 10],
    ];
    const s = chooseSamples(clean, 65536, 100 * 65536, 4);
    expect(s).toEqual(chooseSamples(clean, 65536, 100 * 65536, 4));
    expect(s).toHaveLength(4);
    for (const x of s) expect(x.length).toBe(65536);
    expect(s.map((x) => x.offset / 65536)).toEqual([1, 4, 6, 9]);
    expect(chooseSamples(clean, 65536, 100 * 65536, 100)).toHaveLength(11);
  });

  it('cuts the union of ranges into journal pieces', () => {
    expect(
      journalPieces([
        [
          [100, 50],
          [M - 10, 20],
        ],
        [[120, 100]],
      ]),
    ).toEqual([
      { offset: 100, length: 120 },
      { offset: M - 10, length: 10 },
      { offset: M, length: 10 },
    ]);
  });
});
