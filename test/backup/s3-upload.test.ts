/**
 * The multipart upload of S3 backups (src/backup/s3-upload.ts, s3-sink.ts) against a minimal S3
 * endpoint in this process (s3-fake.ts), without a Ceph: the object is exactly the bytes written,
 * in whatever pieces; every part carries one SHA-256, as its checksum and as the signed payload
 * hash (the endpoint refuses a part whose body does not match either); an object that fits in one
 * part is one PutObject; after a failure nothing more is sent and no object appears; and a backup
 * written through `PendingFile` to s3:// is byte for byte the one written to a local file.
 * (test/backup/s3.test.ts runs the same code against RGW.)
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as s3 from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BACKUP_MAGIC, RecordType } from '../../src/backup/format.ts';
import { MultipartUpload } from '../../src/backup/s3-upload.ts';
import { PendingFile } from '../../src/backup/writer.ts';
import { tempDir } from '../helpers/server.ts';
import { type FakeS3, startFakeS3 } from './s3-fake.ts';

const KiB = 1024;

describe('S3 multipart upload (a fake endpoint)', () => {
  let fake: FakeS3;
  let client: s3.S3Client;
  const dir = tempDir('nbdsnap-s3-upload-');
  const saved = { ...process.env };

  beforeAll(async () => {
    fake = await startFakeS3();
    Object.assign(process.env, {
      AWS_ENDPOINT_URL_S3: fake.url,
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'test',
      AWS_SECRET_ACCESS_KEY: 'test',
    });
    client = new s3.S3Client({
      endpoint: fake.url,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
    });
  });
  afterAll(async () => {
    client?.destroy();
    await fake?.close();
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    dir.cleanup();
  });

  const upload = (key: string, partSize = 64 * KiB, inFlight = 2) =>
    new MultipartUpload({ s3, client, loc: { bucket: 'b', key, url: `s3://b/${key}` }, partSize, inFlight });

  it('uploads exactly the bytes written, each part with one SHA-256 as checksum and payload hash', async () => {
    const data = randomBytes(300 * KiB + 123);
    const u = upload('multi');
    let seed = 7;
    for (let at = 0; at < data.length; ) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      const n = Math.min(data.length - at, 1 + (seed % (40 * KiB)));
      await u.write(data.subarray(at, at + n));
      at += n;
    }
    const id = u.uploadId;
    expect(id).toBeDefined();
    const log = fake.uploads.get(id as string)?.log ?? [];
    await u.complete();
    expect(fake.objects.get('b/multi')?.equals(data)).toBe(true);
    expect(log.map((p) => p.number).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5]);
    for (const p of log) {
      const part = data.subarray((p.number - 1) * 64 * KiB, (p.number - 1) * 64 * KiB + p.length);
      const sum = createHash('sha256').update(part).digest();
      expect(p.checksumSha256, `part ${p.number}`).toBe(sum.toString('base64'));
      expect(p.contentSha256, `part ${p.number}`).toBe(sum.toString('hex')); // signed: RGW checks it
    }
  });

  it('makes an object that fits in one part with one PutObject', async () => {
    const data = randomBytes(10 * KiB);
    const u = upload('single');
    await u.write(data);
    await u.complete();
    expect(u.uploadId).toBeUndefined();
    expect(fake.objects.get('b/single')?.equals(data)).toBe(true);
  });

  it('after a failure takes nothing more and makes no object', async () => {
    const u = upload('failed');
    await u.write(randomBytes(200 * KiB));
    u.fail(new Error('interrupted'));
    await expect(u.write(randomBytes(KiB))).rejects.toThrow(/interrupted/);
    await expect(u.complete()).rejects.toThrow(/interrupted/);
    await u.settled();
    expect(fake.objects.has('b/failed')).toBe(false);
  });

  it('writes through PendingFile the same backup to s3:// as to a local file', async () => {
    const records = Array.from({ length: 40 }, (_, i) => ({
      type: i % 5 === 0 ? RecordType.ZERO : RecordType.DATA,
      offset: i * 64 * KiB,
      length: 64 * KiB,
      payload: i % 5 === 0 ? Buffer.alloc(0) : randomBytes(64 * KiB),
    }));
    const write = async (where: string) => {
      const p = await PendingFile.create(where, BACKUP_MAGIC);
      for (const r of records) await p.writer.add(r);
      return p.commit();
    };
    const local = join(dir.path, 'local.nbk');
    const [a, b] = [await write(local), await write('s3://bkp/backup.nbk')];
    expect(b.equals(a)).toBe(true);
    expect(fake.objects.get('bkp/backup.nbk')?.equals(readFileSync(local))).toBe(true);
    await expect(write('s3://bkp/backup.nbk')).rejects.toThrow(/already exists/);
  });
});
