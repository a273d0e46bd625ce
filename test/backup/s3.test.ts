/**
 * Backups in S3, against RGW of a real single-node Ceph: `nbdsnap backup/verify/restore` with
 * s3://BUCKET/KEY, as child processes with only the standard AWS variables.
 * - a full backup (multipart) and an incremental (one PUT) `--since s3://...`, verified and
 *   restored from S3 byte for byte, onto a file and onto an NBD export;
 * - an existing key is refused, and an object that appears under the key while the backup runs
 *   is not overwritten;
 * - an interrupted upload (SIGTERM, SIGINT, a part corrupted on the wire) leaves no object and no
 *   multipart upload; a SIGKILL leaves no object;
 * - a tampered object is refused by verify and by restore, which writes nothing;
 * - the peak RSS of a large backup to S3 is far below its size.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortMultipartUploadCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BACKUP_MAGIC, RecordType } from '../../src/backup/format.ts';
import { S3Source } from '../../src/backup/s3-source.ts';
import { PendingFile } from '../../src/backup/writer.ts';
import { background, ok } from '../helpers/clients.ts';
import { CLI, tempDir } from '../helpers/server.ts';
import { BackupRig, firstDiff, KiB, MiB, prng, randomBuffer, sha } from './rig.ts';
import {
  childEnv,
  createBucket,
  etagOf,
  FaultyProxy,
  nbdsnapWith,
  peakRss,
  type S3Endpoint,
  s3SkipReason,
  startS3,
  testClient,
  uploadsOf,
} from './s3-rig.ts';

const SIZE = 40 * MiB;
const skip = s3SkipReason();
const dir = tempDir('nbdsnap-backup-s3-');
const file = (n: string) => join(dir.path, n);
const rnd = prng(20261201);
let ep: S3Endpoint;
let s3: S3Client;
let bucket: string;
let env: Record<string, string | undefined>;
let rig: BackupRig;
const url = (key: string) => `s3://${bucket}/${key}`;

beforeAll(async () => {
  if (skip !== undefined) return;
  ep = await startS3();
  s3 = testClient(ep);
  bucket = await createBucket(s3, 'nbdsnap');
  env = childEnv(ep);
  // for the in-process checks (PendingFile)
  Object.assign(process.env, { AWS_ENDPOINT_URL: ep.endpoint, AWS_ACCESS_KEY_ID: ep.accessKeyId });
  process.env.AWS_SECRET_ACCESS_KEY = ep.secretAccessKey;
  rig = new BackupRig(dir.path, { size: SIZE, extra: { blank: SIZE } });
  await rig.start();
  // disk@s0: 15 MiB of data, so a backup of it is a multipart upload of two parts
  await rig.write(0, randomBuffer(rnd, 12 * MiB + 5 * KiB));
  await rig.write(30 * MiB, randomBuffer(rnd, 3 * MiB));
  await rig.zero(31 * MiB, 256 * KiB);
  await rig.snapshot('s0');
});
afterAll(async () => {
  await rig?.stop();
  await ep?.stop();
  dir.cleanup();
});

async function getObject(key: string): Promise<Buffer> {
  const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
}

describe.skipIf(skip !== undefined)(`backups in S3${skip === undefined ? '' : ` (skipped: ${skip})`}`, () => {
  it('takes a full and an incremental backup to S3 and restores them from S3 byte for byte', async () => {
    const r0 = await nbdsnapWith(env, ['backup', rig.uri('disk@s0'), url('disk/s0.nbk')]);
    expect(ok(r0, 'backup to S3')).toMatch(/^wrote s3:\/\/.*\/disk\/s0\.nbk: full backup of disk@s0/);
    expect(r0.stderr).not.toMatch(/Warning/);
    // over one part: a multipart upload (its ETag ends in -PARTS)
    expect(await etagOf(s3, bucket, 'disk/s0.nbk')).toMatch(/-\d+"$/);

    for (let i = 0; i < 20; i++) await rig.write(Math.floor(rnd() * (SIZE - 64 * KiB)), randomBuffer(rnd, 40 * KiB));
    await rig.snapshot('s1');
    const r1 = await nbdsnapWith(env, [
      'backup',
      rig.uri('disk@s1'),
      url('disk/s1.nbk'),
      '--since',
      url('disk/s0.nbk'),
    ]);
    expect(ok(r1, 'incremental to S3')).toMatch(/incremental since disk@s0 of disk@s1/);
    // under one part: a single PUT
    expect(await etagOf(s3, bucket, 'disk/s1.nbk')).toMatch(/^"[0-9a-f]{32}"$/);

    // a local incremental after the S3 ones: chains mix
    await rig.write(5 * MiB, randomBuffer(rnd, 100 * KiB));
    await rig.snapshot('s2');
    ok(await nbdsnapWith(env, ['backup', rig.uri('disk@s2'), file('s2.nbk'), '--since', url('disk/s1.nbk')]));

    const chain = [url('disk/s0.nbk'), url('disk/s1.nbk'), file('s2.nbk')];
    const v = ok(await nbdsnapWith(env, ['verify', ...chain]), 'verify');
    expect(v).toMatch(/s0\.nbk: full backup of disk@s0/);
    expect(v).toMatch(/ok: the chain of 3 files is intact and in order/);

    ok(await nbdsnapWith(env, ['restore', ...chain.slice(0, 2), file('restored.img')]), 'restore from S3');
    expect(firstDiff(readFileSync(file('restored.img')), rig.snap('s1'))).toBeUndefined();
    ok(await nbdsnapWith(env, ['restore', ...chain, rig.uri('blank'), '--journal', file('blank.undo')]));
    expect(firstDiff(await rig.readAll('blank'), rig.snap('s2'))).toBeUndefined();
  });

  it('refuses an existing key, and never overwrites an object that appears while the backup runs', async () => {
    const before = await etagOf(s3, bucket, 'disk/s0.nbk');
    const r = await nbdsnapWith(env, ['backup', rig.uri('disk@s0'), url('disk/s0.nbk')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/disk\/s0\.nbk already exists \(not overwritten\)/);
    expect(await etagOf(s3, bucket, 'disk/s0.nbk')).toBe(before);

    // completion by CompleteMultipartUpload (over one part) and by PutObject (under one part)
    for (const [key, bytes] of [
      ['race/big.nbk', 20 * MiB],
      ['race/small.nbk', 1 * MiB],
    ] as const) {
      const p = await PendingFile.create(url(key), BACKUP_MAGIC);
      for (let at = 0; at < bytes; at += MiB)
        await p.writer.add({ type: RecordType.DATA, offset: at, length: MiB, payload: randomBuffer(rnd, MiB) });
      await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: 'not a backup' }));
      await expect(p.commit()).rejects.toThrow(/appeared while the backup ran \(not overwritten\)/);
      expect((await getObject(key)).toString()).toBe('not a backup');
      expect(await uploadsOf(s3, bucket, key)).toEqual([]);
    }
  });

  it('refuses a missing bucket, a missing object and wrong credentials with one clear line', async () => {
    const noBucket = await nbdsnapWith(env, ['backup', rig.uri('disk@s0'), 's3://no-such-bucket-here/k.nbk']);
    expect(noBucket.code).not.toBe(0);
    expect(noBucket.stderr).toMatch(/s3:\/\/no-such-bucket-here\/k\.nbk: no bucket no-such-bucket-here/);
    const noObject = await nbdsnapWith(env, ['verify', url('none.nbk')]);
    expect(noObject.code).not.toBe(0);
    expect(noObject.stderr).toMatch(/none\.nbk: no such object/);
    const denied = await nbdsnapWith({ ...env, AWS_SECRET_ACCESS_KEY: 'wrong' }, ['verify', url('disk/s0.nbk')]);
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toMatch(/HTTP 403/);
  });

  it('reads an object only as it was when first opened: a replaced object fails as changed', async () => {
    const key = 'replaced/s0.nbk';
    ok(await nbdsnapWith(env, ['backup', rig.uri('disk@s0'), url(key)]));
    const bytes = await getObject(key);
    const src = await S3Source.open(url(key)); // HeadObject: the ETag is pinned
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: bytes })); // same bytes, new ETag
    await expect(src.read(Buffer.alloc(8), 0)).rejects.toThrow(/replaced\/s0\.nbk changed while it was read/);
    await src.close();
    await expect(S3Source.open(url(key))).rejects.toThrow(/was replaced since this command first read it/);
  });

  /** A backup of disk@s0 through a proxy stalled after 2 MiB per connection, signalled mid-upload. */
  async function interrupted(key: string, signal: NodeJS.Signals): Promise<{ exit: number | string; output: string }> {
    const proxy = await FaultyProxy.start(ep.endpoint, 'stall', 2 * MiB);
    try {
      const b = background(process.execPath, [CLI, 'backup', rig.uri('disk@s0'), url(key), '--progress=none'], {
        env: childEnv(ep, proxy.endpoint),
      });
      // mid-upload: the multipart upload exists and a part is held on the wire
      while ((await uploadsOf(s3, bucket, key)).length === 0 || proxy.stalled === 0) {
        if (b.child.exitCode !== null) throw new Error(`backup exited early: ${b.output()}`);
        await sleep(50);
      }
      b.kill(signal);
      proxy.release();
      return { exit: await b.exited, output: b.output() };
    } finally {
      await proxy.close();
    }
  }

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`a backup stopped by ${signal} mid-upload leaves no object and no multipart upload`, async () => {
      const key = `stopped/${signal}.nbk`;
      const { exit, output } = await interrupted(key, signal);
      expect(exit).not.toBe(0);
      expect(output).toMatch(/not written: interrupted/);
      expect(await etagOf(s3, bucket, key)).toBeUndefined();
      expect(await uploadsOf(s3, bucket, key)).toEqual([]);
    });
  }

  it('a SIGKILLed backup leaves no object (its incomplete upload stays listed until aborted)', async () => {
    const key = 'stopped/SIGKILL.nbk';
    const { exit } = await interrupted(key, 'SIGKILL');
    expect(exit).toBe('SIGKILL');
    expect(await etagOf(s3, bucket, key)).toBeUndefined();
    const left = await uploadsOf(s3, bucket, key);
    expect(left.length).toBe(1);
    for (const id of left) await s3.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: id }));
  });

  it('a part corrupted on the wire is refused by the server, and the upload is aborted', async () => {
    const key = 'corrupted/s0.nbk';
    const proxy = await FaultyProxy.start(ep.endpoint, 'flip', 5 * MiB);
    try {
      const r = await nbdsnapWith(childEnv(ep, proxy.endpoint), ['backup', rig.uri('disk@s0'), url(key)]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/upload to s3:\/\/.*corrupted\/s0\.nbk failed/);
    } finally {
      await proxy.close();
    }
    expect(await etagOf(s3, bucket, key)).toBeUndefined();
    expect(await uploadsOf(s3, bucket, key)).toEqual([]);
  });

  it('refuses a tampered object at verify and at restore, writing nothing', async () => {
    const key = 'tampered/s0.nbk';
    ok(await nbdsnapWith(env, ['backup', rig.uri('disk@s0'), url(key)]));
    const bytes = await getObject(key);
    bytes[Math.floor(bytes.length / 2)] = (bytes[Math.floor(bytes.length / 2)] as number) ^ 0x01;
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: bytes }));

    const v = await nbdsnapWith(env, ['verify', url(key)]);
    expect(v.code).not.toBe(0);
    expect(v.stderr).toMatch(/tampered\/s0\.nbk: checksum mismatch in DATA record/);

    const missing = file('never.img');
    const r1 = await nbdsnapWith(env, ['restore', url(key), missing]);
    expect(r1.code).not.toBe(0);
    expect(r1.stderr).toMatch(/checksum mismatch/);
    expect(existsSync(missing)).toBe(false);

    const target = file('kept.img');
    const old = randomBuffer(rnd, SIZE);
    writeFileSync(target, old);
    const r2 = await nbdsnapWith(env, ['restore', url('disk/s0.nbk'), url(key), target]);
    expect(r2.code).not.toBe(0);
    expect(sha(readFileSync(target))).toBe(sha(old));
    expect(readdirSync(dir.path).filter((n) => n.startsWith('kept.img.undo-'))).toEqual([]);
  });

  it('backs up a large snapshot to S3 in bounded memory', async () => {
    const size = Number(process.env.NBDSNAP_TEST_S3_MIB ?? 256) * MiB;
    const big = tempDir('nbdsnap-backup-s3-big-');
    const bigRig = new BackupRig(big.path, { size });
    try {
      const fd = openSync(join(big.path, 'disk.img'), 'r+');
      try {
        for (let at = 0; at < size; at += 16 * MiB) writeSync(fd, randomBytes(16 * MiB), 0, 16 * MiB, at);
      } finally {
        closeSync(fd);
      }
      await bigRig.start();
      await bigRig.snapshot('m');
      const measure = async (args: string[]) => {
        const b = background(process.execPath, [CLI, ...args], { env });
        const peak = await peakRss(b.child.pid as number, b.exited);
        expect(await b.exited, b.output()).toBe(0);
        process.stdout.write(
          `peak RSS of ${args[0]} of ${size / MiB} MiB, ${args.at(-1)}: ${(peak / MiB).toFixed(0)} MiB\n`,
        );
        return peak;
      };
      const local = await measure(['backup', '--progress=none', bigRig.uri('disk@m'), join(big.path, 'm.nbk')]);
      const upload = await measure(['backup', '--progress=none', bigRig.uri('disk@m'), url('big/m.nbk')]);
      const read = await measure(['verify', url('big/m.nbk')]);
      // whole-object buffering would add the backup's size (256 MiB) to the local figure;
      // 4 parts of 8 MiB in flight (upload) or 3 blocks of 8 MiB (reads) add a few dozen MiB,
      // plus what garbage collection leaves behind on a loaded machine (up to about 110 MiB seen)
      expect(local).toBeGreaterThan(0);
      expect(upload - local).toBeLessThan(0.75 * size);
      expect(read - local).toBeLessThan(0.75 * size);
    } finally {
      await bigRig.stop();
      big.cleanup();
    }
  });
});
