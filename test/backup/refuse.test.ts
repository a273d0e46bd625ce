/**
 * Bad chains are refused before anything is written, and undo puts a target back exactly:
 * tampered files (a byte flipped in the header, a sample, data, a checksum, the end marker),
 * truncated files, reordered chains and a wrong base are refused by restore (target hashed
 * before and after: untouched, no journal, not even created) and by verify; undo restores the
 * old bytes, refuses once the target changed since, and needs --force for an unfinished restore.
 */
import { copyFileSync, existsSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/backup.ts';
import {
  BACKUP_MAGIC,
  type BackupHeader,
  decodeHeader,
  encodeHeader,
  JOURNAL_MAGIC,
  RecordType,
} from '../../src/backup/format.ts';
import { RecordReader } from '../../src/backup/reader.ts';
import { restore } from '../../src/backup/restore.ts';
import { undo } from '../../src/backup/undo.ts';
import { verify } from '../../src/backup/verify.ts';
import { PendingFile } from '../../src/backup/writer.ts';
import { ok } from '../helpers/clients.ts';
import { tempDir } from '../helpers/server.ts';
import { BackupRig, BLOCK, fileSha, firstDiff, MiB, nbdsnap, prng, randomBuffer } from './rig.ts';

const SIZE = 16 * MiB;
const dir = tempDir('nbdsnap-backup-refuse-');
const rig = new BackupRig(dir.path, { size: SIZE });
const rnd = prng(7);
const file = (n: string) => join(dir.path, n);
const FULL = file('full.nbk');
const INC1 = file('inc1.nbk');
const INC2 = file('inc2.nbk');
/** Holds disk@s0 (restored from FULL). */
const T = file('target.img');

beforeAll(async () => {
  await rig.start();
  await rig.write(0, randomBuffer(rnd, 8 * MiB));
  await rig.snapshot('s0');
  await backup({ source: rig.uri('disk@s0'), file: FULL });
  // s1 changes every other block: a target holding s0 differs from s1 almost everywhere
  for (let b = 0; b < SIZE / BLOCK; b += 2) await rig.write(b * BLOCK + 100, randomBuffer(rnd, 1000));
  await rig.snapshot('s1');
  await backup({ source: rig.uri('disk@s1'), file: INC1, since: FULL });
  await rig.write(3 * MiB + 5, randomBuffer(rnd, 200_000));
  await rig.zero(9 * MiB, 256 * 1024);
  await rig.snapshot('s2');
  await backup({ source: rig.uri('disk@s2'), file: INC2, since: INC1 });
  await restore({ files: [FULL], target: T, journal: file('t0.undo') });
  expect(firstDiff(readFileSync(T), rig.snap('s0'))).toBeUndefined();
}, 120_000);

afterAll(async () => {
  await rig.stop();
  dir.cleanup();
});

/** Byte offsets of the records of a file: type -> [at, payload length][]. */
async function layout(path: string, magic = BACKUP_MAGIC): Promise<Map<string, [number, number][]>> {
  const r = await RecordReader.open(path, magic, 'x');
  const out = new Map<string, [number, number][]>();
  for (let rec = await r.next(); rec !== undefined; rec = await r.next()) {
    out.set(rec.type, [...(out.get(rec.type) ?? []), [rec.at, rec.payload.length]]);
  }
  await r.close();
  const size = readFileSync(path).length;
  out.set('END.', [[size - (24 + 72 + 4), 72]]);
  return out;
}

function flipped(src: string, at: number, name: string): string {
  const b = readFileSync(src);
  b[at] = (b[at] as number) ^ 0x01;
  const out = file(name);
  writeFileSync(out, b);
  return out;
}

/** Restore must fail with `pattern`, leaving `target` byte for byte as it was and no journal. */
async function refused(files: string[], target: string, pattern: RegExp): Promise<void> {
  const before = existsSync(target) ? fileSha(target) : undefined;
  const journal = file(`refused-${Math.floor(rnd() * 1e9)}.undo`);
  await expect(restore({ files, target, journal })).rejects.toThrow(pattern);
  expect(existsSync(target) ? fileSha(target) : undefined).toBe(before);
  expect(existsSync(journal)).toBe(false);
}

describe('restore refuses bad chains and leaves the target untouched', () => {
  it('a flipped byte anywhere: header, sample, data, checksum, end marker', async () => {
    const l = await layout(INC1);
    const head = (l.get('HEAD') as [number, number][])[0] as [number, number];
    const smpl = (l.get('SMPL') as [number, number][])[3] as [number, number];
    const data = (l.get('DATA') as [number, number][])[5] as [number, number];
    const end = (l.get('END.') as [number, number][])[0] as [number, number];
    const spots: [string, number, RegExp][] = [
      ['magic', 2, /not an nbdsnap backup/],
      ['header field', head[0] + 24 + 8, /checksum mismatch in HEAD/],
      ['sample hash', smpl[0] + 24 + 10, /checksum mismatch in SMPL/],
      ['data byte', data[0] + 24 + Math.floor(data[1] / 2), /checksum mismatch in DATA/],
      ['data length', data[0] + 4, /checksum|truncated|record/],
      ['record crc', data[0] + 24 + data[1], /checksum mismatch in DATA/],
      ['end totals', end[0] + 24 + 1, /checksum mismatch in END/],
    ];
    for (const [what, at, pattern] of spots) {
      const bad = flipped(INC1, at, `inc1-${what.replace(' ', '-')}.nbk`);
      await refused([bad], T, pattern);
      await refused([FULL, bad], file('fresh.img'), pattern);
      await expect(verify([FULL, bad]), what).rejects.toThrow(pattern);
    }
    const badFull = flipped(FULL, head[0] + 24 + 30, 'full-bad.nbk');
    await refused([badFull], T, /checksum mismatch in HEAD/);
  });

  it('a truncated file: cut in the middle, or just before its end marker', async () => {
    const size = readFileSync(INC1).length;
    for (const [name, keep] of [
      ['half', Math.floor(size / 2)],
      ['no-end', size - (24 + 72 + 4)],
      ['magic-only', 8],
    ] as const) {
      const cut = file(`inc1-${name}.nbk`);
      copyFileSync(INC1, cut);
      truncateSync(cut, keep);
      await refused([cut], T, /truncated/);
      await expect(verify([FULL, cut])).rejects.toThrow(/truncated/);
    }
    const extra = file('inc1-extra.nbk');
    writeFileSync(extra, Buffer.concat([readFileSync(INC1), Buffer.from('x')]));
    await refused([extra], T, /data after the end marker/);
  });

  it('a reordered or gapped chain, and a full backup in the middle', async () => {
    await refused([FULL, INC2, INC1], file('fresh.img'), /inc2\.nbk does not follow .*full\.nbk.*disk@s1 .*disk@s0/);
    await refused([FULL, INC2], T, /does not follow/);
    await refused([INC2, INC1], T, /does not follow/);
    await refused([FULL, INC1, INC1], T, /same backup/);
    await refused([FULL, INC1, FULL], T, /only the first file of a chain/);
    for (const chain of [
      [FULL, INC2],
      [FULL, INC2, INC1],
      [INC1, FULL],
    ])
      await expect(verify(chain)).rejects.toThrow(/does not follow|only the first/);
  });

  it('a wrong base: the target does not hold FROM (sampled content), or is blank', async () => {
    // T holds s0; INC2 goes from s1
    await refused(
      [INC2],
      T,
      /does not hold disk@s1 .*the base of .*inc2\.nbk: \d+ of \d+ sampled unchanged blocks differ/,
    );
    await refused([INC1], file('nothing.img'), /is empty: restore the full backup/);
    // through the CLI: one clear error line, non-zero exit, target untouched
    const before = fileSha(T);
    const r = await nbdsnap(['restore', INC2, T, '--progress=none']);
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^nbdsnap: error: .* does not hold disk@s1/)]);
    expect(fileSha(T)).toBe(before);
  });

  it('verify accepts the good chain and any good prefix', async () => {
    expect((await verify([FULL, INC1, INC2])).map((f) => f.header.toName)).toEqual(['s0', 's1', 's2']);
    expect((await verify([INC1, INC2])).length).toBe(2);
    const r = await nbdsnap(['verify', FULL, INC1, file('inc1-half.nbk')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/^nbdsnap: error: .*inc1-half\.nbk: truncated/);
  });
});

/** A copy of `src` with its header changed (every record re-framed, so the copy is valid). */
async function withHeader(src: string, name: string, patch: Partial<BackupHeader>): Promise<string> {
  const r = await RecordReader.open(src, BACKUP_MAGIC, 'x');
  const out = file(name);
  const p = await PendingFile.create(out, BACKUP_MAGIC);
  for (let rec = await r.next(); rec !== undefined; rec = await r.next()) {
    const payload =
      rec.type === RecordType.HEAD ? encodeHeader({ ...decodeHeader(rec.payload), ...patch }) : rec.payload;
    await p.writer.add({ type: rec.type, offset: rec.offset, length: rec.length, payload });
  }
  await r.close();
  await p.commit();
  return out;
}

describe('backup refuses a base it cannot trust', () => {
  it('--since a file from another tracking generation, or whose snapshot name was reused', async () => {
    const otherGen = await withHeader(INC2, 'inc2-othergen.nbk', {
      generation: '00000000-0000-4000-8000-000000000000',
    });
    const reused = await withHeader(INC2, 'inc2-reused.nbk', { toPoint: 1 }); // disk@s2 is point 3
    await rig.write(0, randomBuffer(rnd, 4096));
    await rig.snapshot('s3');
    const dest = file('s3.nbk');
    await expect(backup({ source: rig.uri('disk@s3'), file: dest, since: otherGen })).rejects.toThrow(
      /change tracking of disk was reset .*a full backup is needed/,
    );
    await expect(backup({ source: rig.uri('disk@s3'), file: dest, since: reused })).rejects.toThrow(
      /disk@s2 is not the snapshot .* was taken from .*take a full backup/,
    );
    expect(readdirSync(dir.path).filter((f) => f.startsWith('s3.nbk'))).toEqual([]);
    await backup({ source: rig.uri('disk@s3'), file: dest, since: INC2 });
    expect((await verify([FULL, INC1, INC2, dest])).length).toBe(4);
  });
});

describe('undo', () => {
  it('puts the target back exactly, and a second undo finds nothing to do', async () => {
    const before = fileSha(T);
    await restore({ files: [INC1, INC2], target: T, journal: file('u1.undo') });
    expect(firstDiff(readFileSync(T), rig.snap('s2'))).toBeUndefined();
    const r = await nbdsnap(['restore', '--undo', file('u1.undo'), T, '--progress=none']);
    ok(r, 'restore --undo');
    expect(fileSha(T)).toBe(before);
    expect(firstDiff(readFileSync(T), rig.snap('s0'))).toBeUndefined();
    const again = await nbdsnap(['restore', '--undo', file('u1.undo'), T, '--progress=none']);
    ok(again, 'second undo');
    expect(again.stdout).toMatch(/nothing to undo/);
    expect(fileSha(T)).toBe(before);
  });

  it('refuses when the target changed since the restore', async () => {
    await restore({ files: [INC1, INC2], target: T, journal: file('u2.undo') });
    const b = readFileSync(T);
    b[3 * MiB + 50] = (b[3 * MiB + 50] as number) ^ 0xff; // inside a range INC2 wrote
    writeFileSync(T, b);
    const changed = fileSha(T);
    await expect(undo({ journal: file('u2.undo'), target: T })).rejects.toThrow(/changed since the restore/);
    expect(fileSha(T)).toBe(changed);
    // put it back as the restore left it: now undo works
    b[3 * MiB + 50] = (b[3 * MiB + 50] as number) ^ 0xff;
    writeFileSync(T, b);
    await undo({ journal: file('u2.undo'), target: T });
    expect(firstDiff(readFileSync(T), rig.snap('s0'))).toBeUndefined();
  });

  it('needs --force after an interrupted restore, then restores exactly', async () => {
    const before = fileSha(T);
    await restore({ files: [INC1], target: T, journal: file('u3.undo') });
    // the journal as a restore killed while writing leaves it: everything up to MARK
    const l = await layout(file('u3.undo'), JOURNAL_MAGIC);
    const mark = (l.get(RecordType.MARK) as [number, number][])[0] as [number, number];
    copyFileSync(file('u3.undo'), file('u3-early.undo'));
    truncateSync(file('u3-early.undo'), mark[0]); // as if killed before it wrote anything
    await expect(undo({ journal: file('u3-early.undo'), target: T })).rejects.toThrow(/before writing anything/);
    truncateSync(file('u3.undo'), mark[0] + 24 + 4);
    await expect(undo({ journal: file('u3.undo'), target: T })).rejects.toThrow(/did not finish.*--force/);
    await undo({ journal: file('u3.undo'), target: T, force: true });
    expect(fileSha(T)).toBe(before);
  });

  it('removes a file the restore created', async () => {
    const created = file('created.img');
    await restore({ files: [FULL, INC1], target: created, journal: file('u4.undo') });
    expect(firstDiff(readFileSync(created), rig.snap('s1'))).toBeUndefined();
    const r = await undo({ journal: file('u4.undo'), target: created });
    expect(r.removed).toBe(true);
    expect(existsSync(created)).toBe(false);
  });
});
