/**
 * Positional reads of a backup stored in S3 (`ByteSource`, reader.ts): ranged GETs of 8 MiB
 * blocks, the next two fetched while one is consumed, so at most three blocks (24 MiB) are held
 * whatever the object's size.
 *
 * Every GET carries `If-Match: ETAG`, the ETag the object had when this process first opened it:
 * an object replaced while it is read, or between `restore`'s check and its apply, fails with
 * "changed" instead of mixing two versions (the backup format's checksums would catch a mix too,
 * but only after part of it was used).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { NbdsnapError } from '../errors.ts';
import type { ByteSource } from './reader.ts';
import { headObject, httpStatus, loadSdk, s3Error, sharedClient } from './s3-client.ts';
import { parseS3Url, type S3Location } from './s3-url.ts';

const BLOCK = 8 * 1024 * 1024;
const AHEAD = 2;

/** url -> ETag first seen by this process. */
const pinned = new Map<string, string>();

const ignore = (): void => undefined;

export class S3Source implements ByteSource {
  readonly size: number;
  private readonly loc: S3Location;
  private readonly client: S3Client;
  private readonly etag: string;
  private readonly blocks = new Map<number, Promise<Buffer>>();
  private readonly stop = new AbortController();

  private constructor(loc: S3Location, client: S3Client, size: number, etag: string) {
    this.loc = loc;
    this.client = client;
    this.size = size;
    this.etag = etag;
  }

  static async open(url: string): Promise<S3Source> {
    const loc = parseS3Url(url);
    const client = await sharedClient();
    const facts = await headObject(client, loc);
    if (facts === undefined) throw new NbdsnapError('NOT_FOUND', `cannot open ${url}: no such object`);
    const first = pinned.get(url);
    if (first !== undefined && first !== facts.etag)
      throw new NbdsnapError('CORRUPT', `${url} was replaced since this command first read it (ETag ${first})`);
    pinned.set(url, facts.etag);
    return new S3Source(loc, client, facts.size, facts.etag);
  }

  async read(buf: Buffer, position: number): Promise<number> {
    let done = 0;
    while (done < buf.length && position + done < this.size) {
      const at = position + done;
      const i = Math.floor(at / BLOCK);
      const block = await this.block(i);
      for (const k of this.blocks.keys()) if (k < i) this.blocks.delete(k);
      for (let k = i + 1; k <= i + AHEAD && k * BLOCK < this.size; k++) void this.block(k);
      const from = at - i * BLOCK;
      done += block.copy(buf, done, from, Math.min(block.length, from + buf.length - done));
    }
    return done;
  }

  private block(i: number): Promise<Buffer> {
    let p = this.blocks.get(i);
    if (p === undefined) {
      p = this.fetch(i * BLOCK, Math.min(BLOCK, this.size - i * BLOCK));
      p.catch(ignore); // a read-ahead nobody waits for must not crash the process
      this.blocks.set(i, p);
    }
    return p;
  }

  private async fetch(start: number, length: number): Promise<Buffer> {
    const { s3 } = await loadSdk();
    const { url, bucket, key } = this.loc;
    let body: AsyncIterable<Uint8Array>;
    try {
      const res = await this.client.send(
        new s3.GetObjectCommand({
          Bucket: bucket,
          Key: key,
          Range: `bytes=${start}-${start + length - 1}`,
          IfMatch: this.etag,
        }),
        { abortSignal: this.stop.signal },
      );
      body = res.Body as AsyncIterable<Uint8Array>;
    } catch (err) {
      if (httpStatus(err) === 412)
        throw new NbdsnapError('CORRUPT', `${url} changed while it was read (its ETag is no longer ${this.etag})`);
      throw s3Error(err, `cannot read ${url} at byte ${start}`);
    }
    const out = Buffer.allocUnsafe(length);
    let have = 0;
    try {
      for await (const chunk of body) {
        if (have + chunk.length > length) throw new Error(`more than the ${length} bytes asked for`);
        out.set(chunk, have);
        have += chunk.length;
      }
    } catch (err) {
      throw s3Error(err, `cannot read ${url} at byte ${start}`);
    }
    if (have !== length)
      throw new NbdsnapError('EIO', `cannot read ${url} at byte ${start}: ${have} of ${length} bytes`);
    return out;
  }

  async close(): Promise<void> {
    this.stop.abort();
    this.blocks.clear();
  }
}

/** The object's size (for progress and `verify`'s report). */
export async function objectSize(url: string): Promise<number> {
  const loc = parseS3Url(url);
  const facts = await headObject(await sharedClient(), loc);
  if (facts === undefined) throw new NbdsnapError('NOT_FOUND', `${url}: no such object`);
  return facts.size;
}
