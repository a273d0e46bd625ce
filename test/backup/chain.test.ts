/**
 * Write / snapshot / back up cycles against an in-memory model: a full backup and six
 * incrementals (since a file, since a name, with FROM's export deleted), each checked on its own
 * (applied to the model of FROM it gives TO, it touches only changed blocks, trimmed records,
 * correct samples), the `qemu:dirty-bitmap:FROM` map checked with nbdinfo, and the whole chain
 * restored onto a blank file and onto an NBD export, byte for byte equal to the last snapshot.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/backup.ts';
import { RecordType } from '../../src/backup/format.ts';
import { BackupReader } from '../../src/backup/reader.ts';
import { restore } from '../../src/backup/restore.ts';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { ok } from '../helpers/clients.ts';
import { tempDir } from '../helpers/server.ts';
import {
  BackupRig,
  BLOCK,
  dirtyBlocksOf,
  firstDiff,
  KiB,
  MiB,
  nbdinfoMap,
  nbdsnap,
  prng,
  randomBuffer,
  sha,
  sorted,
} from './rig.ts';

const SIZE = 32 * MiB;
const dir = tempDir('nbdsnap-backup-chain-');
const rig = new BackupRig(dir.path, { size: SIZE, extra: { blank: SIZE } });
const rnd = prng(20261122);
const file = (n: string) => join(dir.path, n);

beforeAll(async () => {
  await rig.start();
});
afterAll(async () => {
  await rig.stop();
  dir.cleanup();
});

/** A round of mixed writes; returns the offset of a block changed in one sector only. */
async function workload(round: number): Promise<number> {
  const pick = (max: number, align = 1) => Math.floor((rnd() * max) / align) * align;
  for (let i = 0; i < 12; i++) {
    const len = 1 + pick(300 * KiB);
    const off = pick(SIZE - len, i % 2 === 0 ? 512 : 1);
    await rig.write(off, randomBuffer(rnd, len));
  }
  const zlen = 4 * KiB + pick(256 * KiB, 4 * KiB);
  await rig.zero(pick(SIZE - zlen, 4 * KiB), zlen);
  const tlen = 64 * KiB + pick(512 * KiB, 64 * KiB);
  await rig.trim(pick(SIZE - tlen, 64 * KiB), tlen);
  // rewrite a block with exactly what it holds: tracked as changed, but nothing to back up
  const same = pick(SIZE - BLOCK, BLOCK);
  await rig.write(same, Buffer.from(rig.model.subarray(same, same + BLOCK)));
  // one sector changed inside an otherwise untouched block: the record must shrink to it
  const lone = (16 + round) * MiB + 3 * BLOCK;
  const sector = Buffer.from(rig.model.subarray(lone + 1024, lone + 1536));
  sector[7] = (sector[7] as number) ^ 0xff;
  await rig.write(lone + 1024, sector);
  return lone;
}

interface Applied {
  records: { type: string; offset: number; length: number }[];
  samples: number;
}

/** Apply an incremental to a copy of `base` in memory, checking its samples against it first. */
async function applyToModel(path: string, base: Buffer, changed: Set<number>): Promise<{ out: Buffer } & Applied> {
  const out = Buffer.from(base);
  const r = await BackupReader.open(path);
  const records: Applied['records'] = [];
  let samples = 0;
  for await (const rec of r.records()) {
    const first = Math.floor(rec.offset / BLOCK);
    const last = Math.floor((rec.offset + rec.length - 1) / BLOCK);
    if (rec.type === RecordType.SMPL) {
      samples++;
      for (let b = first; b <= last; b++) expect(changed.has(b), `sample in changed block ${b}`).toBe(false);
      expect(sha(base.subarray(rec.offset, rec.offset + rec.length))).toBe(rec.payload.toString('hex'));
      continue;
    }
    for (let b = first; b <= last; b++) expect(changed.has(b), `${rec.type} record in clean block ${b}`).toBe(true);
    if (rec.type === RecordType.DATA) rec.payload.copy(out, rec.offset);
    else out.fill(0, rec.offset, rec.offset + rec.length);
    records.push({ type: rec.type, offset: rec.offset, length: rec.length });
  }
  return { out, records, samples };
}

describe('backup chains', () => {
  const chain: string[] = [];
  const names: string[] = [];

  it('takes a full backup with JSON progress, and it holds the snapshot exactly', async () => {
    await rig.write(0, randomBuffer(rnd, 3 * MiB));
    await rig.write(10 * MiB, randomBuffer(rnd, 5 * MiB + 123));
    await rig.zero(11 * MiB, 256 * KiB);
    await rig.snapshot('s0');
    names.push('s0');
    const facts = await NbdClient.listMetaContexts(rig.uri('disk@s0'), ['x-nbdsnap:']);
    expect(facts).toEqual([
      'x-nbdsnap:point=1',
      expect.stringMatching(/^x-nbdsnap:created=\d+$/),
      expect.stringMatching(/^x-nbdsnap:generation=[0-9a-f-]{36}$/),
      `x-nbdsnap:block-size=${BLOCK}`,
    ]);
    const r = await nbdsnap(['backup', rig.uri('disk@s0'), file('full.nbk'), '--progress=json']);
    ok(r, 'nbdsnap backup');
    expect(r.stdout).toMatch(/^wrote .*full\.nbk: full backup of disk@s0/);
    const events = r.stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; done?: number; total: number; percent?: number });
    expect(events[0]?.type).toBe('start');
    expect(events[events.length - 1]).toMatchObject({ type: 'done', done: SIZE, total: SIZE });
    const pcts = events.filter((e) => e.type === 'progress').map((e) => e.percent as number);
    expect(pcts).toEqual([...pcts].sort((a, b) => a - b));
    chain.push(file('full.nbk'));
    const { out } = await applyToModel(file('full.nbk'), Buffer.alloc(SIZE, 0xee), new Set(rangeOfBlocks(SIZE)));
    expect(firstDiff(out, rig.snap('s0'))).toBeUndefined();
  });

  // round -> how FROM is named, and what happens to FROM's export before the backup
  const rounds: { since: 'file' | 'name'; deleteFrom: boolean }[] = [
    { since: 'file', deleteFrom: false },
    { since: 'name', deleteFrom: false },
    { since: 'file', deleteFrom: true },
    { since: 'name', deleteFrom: true },
    { since: 'file', deleteFrom: false },
    { since: 'name', deleteFrom: false },
  ];
  for (const [i, round] of rounds.entries()) {
    it(`incremental ${i + 1}: since ${round.since}${round.deleteFrom ? ', FROM deleted' : ''}`, async () => {
      const from = names[names.length - 1] as string;
      const to = `s${i + 1}`;
      const lone = await workload(i);
      await rig.snapshot(to);
      names.push(to);
      const changed = rig.changedBlocks(from, to);

      // the dirty bitmap a standard client sees is exactly the model's changed blocks
      const map = nbdinfoMap(`qemu:dirty-bitmap:${from}`, rig.uri(`disk@${to}`));
      expect(sorted(dirtyBlocksOf(map, SIZE))).toEqual(sorted(changed));

      if (round.deleteFrom) await rig.deleteSnapshot(from);
      const path = file(`inc${i + 1}.nbk`);
      const since = round.since === 'file' ? (chain[chain.length - 1] as string) : from;
      const res = await backup({ source: rig.uri(`disk@${to}`), file: path, since });
      expect(res.header).toMatchObject({ kind: 'incremental', fromName: from, toName: to, deviceSize: SIZE });
      // FROM's point is known, even when it was named and its export is gone (the server lists
      // the point each dirty bitmap counts from); the chain check compares it with the file before
      expect(res.header.fromPoint).toBeGreaterThan(0);
      chain.push(path);

      const { out, records, samples } = await applyToModel(path, rig.snap(from), changed);
      expect(firstDiff(out, rig.snap(to))).toBeUndefined();
      expect(samples).toBeGreaterThan(0);
      const covered = records.reduce((n, r) => n + r.length, 0);
      expect(covered).toBeLessThanOrEqual(changed.size * BLOCK);
      if (!round.deleteFrom) {
        // sheepdog trimming against FROM: the one-sector change is a 512-byte record
        const rec = records.find((r) => r.offset <= lone + 1024 && lone + 1024 < r.offset + r.length);
        expect(rec).toEqual({ type: 'DATA', offset: lone + 1024, length: 512 });
      }
    });
  }

  it('verify accepts the chain', async () => {
    const r = await nbdsnap(['verify', ...chain]);
    ok(r, 'nbdsnap verify');
    expect(r.stdout).toContain(`ok: the chain of ${chain.length} files is intact and in order`);
  });

  it('restores full + every incremental onto a blank file: the last snapshot, byte for byte', async () => {
    const target = file('restored.img');
    expect(existsSync(target)).toBe(false);
    const r = await nbdsnap(['restore', ...chain, target, '--progress=none', '--journal', file('restored.undo')]);
    ok(r, 'nbdsnap restore');
    const last = names[names.length - 1] as string;
    expect(firstDiff(readFileSync(target), rig.snap(last))).toBeUndefined();
    expect(firstDiff(await rig.readAll(`disk@${last}`), rig.snap(last))).toBeUndefined();
  });

  it('restores onto an NBD export in two steps (full + 2, then the rest onto what it holds)', async () => {
    await restore({ files: chain.slice(0, 3), target: rig.uri('blank'), journal: file('blank1.undo') });
    expect(firstDiff(await rig.readAll('blank'), rig.snap('s2'))).toBeUndefined();
    await restore({ files: chain.slice(3), target: rig.uri('blank'), journal: file('blank2.undo') });
    expect(firstDiff(await rig.readAll('blank'), rig.snap(names[names.length - 1] as string))).toBeUndefined();
  });
});

function rangeOfBlocks(size: number): number[] {
  return Array.from({ length: Math.ceil(size / BLOCK) }, (_, i) => i);
}
