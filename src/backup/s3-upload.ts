/**
 * A multipart upload with the plain S3 calls (CreateMultipartUpload, UploadPart,
 * CompleteMultipartUpload; one PutObject when the whole object fits in one part), fed by
 * `write()`: bytes are copied once, into the part being filled, one of `inFlight + 1` part buffers
 * that are reused from part to part (no joining of stream chunks into parts, no garbage per part).
 *
 * Each part's SHA-256 is computed once, here, and passed with it (`ChecksumSHA256`): the SDK then
 * computes no checksum of its own, and the signature takes the same value as the payload hash
 * (s3-sink.ts), so one SHA-256 pass per part covers both the part's checksum (kept by S3) and the
 * signed payload hash (checked by RGW before Squid, which ignores the checksum headers).
 *
 * After a failure (`fail`, or a part refused) nothing more is taken or sent: the parts in flight
 * finish, `settled()` says when, and the caller aborts the upload (`uploadId`).
 */
import { createHash } from 'node:crypto';
import type * as ClientS3 from '@aws-sdk/client-s3';
import type { S3Location } from './s3-url.ts';

export interface UploadOptions {
  s3: typeof ClientS3;
  client: ClientS3.S3Client;
  loc: S3Location;
  partSize: number;
  /** Parts uploading at once; `write()` waits while they are all busy and the next part is full. */
  inFlight: number;
  contentType?: string;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('base64');

export class MultipartUpload {
  /** Set once CreateMultipartUpload answered (the caller aborts it after a failure). */
  uploadId: string | undefined;
  private readonly o: UploadOptions;
  private part: Buffer;
  private filled = 0;
  private readonly spare: Buffer[] = [];
  private readonly running = new Set<Promise<void>>();
  private readonly done: ClientS3.CompletedPart[] = [];
  private nextNumber = 1;
  private created: Promise<string> | undefined;
  private failure: Error | undefined;

  constructor(o: UploadOptions) {
    this.o = o;
    this.part = Buffer.allocUnsafeSlow(o.partSize);
  }

  /** Copy `bytes` into the parts; resolves once they are taken (rejects after a failure). */
  async write(bytes: Buffer): Promise<void> {
    for (let at = 0; at < bytes.length; ) {
      this.check();
      const k = bytes.copy(this.part, this.filled, at);
      this.filled += k;
      at += k;
      if (this.filled === this.part.length) await this.sendPart();
    }
  }

  /** Upload what is left and make the object (the completion carries `If-None-Match: *`). */
  async complete(): Promise<void> {
    this.check();
    const { s3, client, loc } = this.o;
    const common = { Bucket: loc.bucket, Key: loc.key, IfNoneMatch: '*' };
    if (this.nextNumber === 1) {
      const body = this.part.subarray(0, this.filled);
      await client.send(
        new s3.PutObjectCommand({
          ...common,
          Body: body,
          ContentLength: body.length,
          ChecksumSHA256: sha256(body),
          ...(this.o.contentType === undefined ? {} : { ContentType: this.o.contentType }),
        }),
      );
      return;
    }
    if (this.filled > 0) await this.sendPart();
    await this.settled();
    this.check();
    const parts = [...this.done].sort((a, b) => (a.PartNumber ?? 0) - (b.PartNumber ?? 0));
    await client.send(
      new s3.CompleteMultipartUploadCommand({ ...common, UploadId: this.uploadId, MultipartUpload: { Parts: parts } }),
    );
  }

  /** Take and send nothing more. */
  fail(err: Error): void {
    this.failure ??= err;
  }

  /** Resolves once no part is in flight and CreateMultipartUpload, if sent, has answered. */
  async settled(): Promise<void> {
    while (this.running.size > 0) await Promise.all(this.running);
    await this.created?.catch(() => undefined);
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  /** Send the part filled so far, once fewer than `inFlight` are; the next part gets a spare buffer. */
  private async sendPart(): Promise<void> {
    while (this.running.size >= this.o.inFlight) await Promise.race(this.running);
    this.check();
    const buffer = this.part;
    const body = buffer.subarray(0, this.filled);
    this.part = this.spare.pop() ?? Buffer.allocUnsafeSlow(this.o.partSize);
    this.filled = 0;
    const number = this.nextNumber++;
    const sending: Promise<void> = this.uploadPart(number, body).then(
      () => {
        this.running.delete(sending);
        this.spare.push(buffer);
      },
      (err: unknown) => {
        this.running.delete(sending);
        this.fail(err instanceof Error ? err : new Error(String(err)));
      },
    );
    this.running.add(sending);
  }

  private async uploadPart(number: number, body: Buffer): Promise<void> {
    const { s3, client, loc } = this.o;
    this.created ??= client
      .send(
        new s3.CreateMultipartUploadCommand({
          Bucket: loc.bucket,
          Key: loc.key,
          ChecksumAlgorithm: 'SHA256',
          ...(this.o.contentType === undefined ? {} : { ContentType: this.o.contentType }),
        }),
      )
      .then((r) => {
        if (r.UploadId === undefined) throw new Error('CreateMultipartUpload answered no UploadId');
        this.uploadId = r.UploadId;
        return r.UploadId;
      });
    const id = await this.created;
    this.check();
    const sum = sha256(body);
    const r = await client.send(
      new s3.UploadPartCommand({
        Bucket: loc.bucket,
        Key: loc.key,
        UploadId: id,
        PartNumber: number,
        Body: body,
        ContentLength: body.length,
        ChecksumSHA256: sum,
      }),
    );
    this.done.push({ PartNumber: number, ETag: r.ETag, ChecksumSHA256: sum });
  }
}
