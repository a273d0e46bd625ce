/**
 * A backup written to S3 (`PendingFile`, writer.ts): the records are copied into the parts of a
 * multipart upload (s3-upload.ts), 8 MiB parts, 4 in flight, so memory stays near 40 MiB
 * whatever the backup's size (the writer waits whenever every part is busy).
 *
 * - Each part carries its SHA-256 (`ChecksumSHA256`, checked and kept by S3 and by RGW from
 *   Squid; RGW before that ignores it but checks the same SHA-256 as the signed payload hash,
 *   `x-amz-content-sha256`, and refuses the part on a mismatch). It is computed once per part.
 * - The object appears under its key only when the upload completes, after the end marker. On
 *   any failure, SIGINT/SIGTERM included (they end in `discard()`), the pipe is broken, the
 *   parts in flight finish, and the multipart upload is aborted, so neither an object nor an
 *   incomplete upload is left. (Only a SIGKILL leaves an incomplete upload, never an object:
 *   a bucket lifecycle rule `AbortIncompleteMultipartUpload` removes those.)
 * - Never replacing an object: refused if the key exists at the start (HeadObject); the
 *   completion (CompleteMultipartUpload, or PutObject for a backup under one part) carries
 *   `If-None-Match: *`, and since RGW before Squid ignores that header on completions, another
 *   HeadObject runs just before it.
 */
import type * as ClientS3 from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { NbdsnapError } from '../errors.ts';
import { checkBucket, headObject, httpStatus, loadSdk, newClient, s3Error, sharedClient } from './s3-client.ts';
import { MultipartUpload } from './s3-upload.ts';
import { parseS3Url, type S3Location } from './s3-url.ts';
import { type PendingFile, type RecordSink, RecordWriter } from './writer.ts';

const MiB = 1024 * 1024;
export const PART_SIZE = 8 * MiB;
export const PARTS_IN_FLIGHT = 4;

type RelativeMiddleware = Parameters<S3Client['middlewareStack']['addRelativeTo']>[0];
const COMPLETIONS = new Set(['CompleteMultipartUploadCommand', 'PutObjectCommand']);
const ignore = (): void => undefined;

/** The signal's reason if it is an AbortError (the backup says "interrupted"), else a new one. */
function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error && reason.name === 'AbortError') return reason;
  return Object.assign(new Error('interrupted'), { name: 'AbortError' });
}

export class S3PendingObject implements PendingFile {
  readonly finalPath: string;
  readonly writer: RecordWriter;
  private readonly loc: S3Location;
  private readonly upload: MultipartUpload;
  /** The completion, once the writer closed the sink while committing. */
  private done: Promise<void> | undefined;
  /** The first failure: an NbdsnapError, or the signal's AbortError when interrupted. */
  private failure: Error | undefined;
  private committing = false;
  private discarded = false;

  private constructor(
    loc: S3Location,
    client: S3Client,
    s3: typeof ClientS3,
    magic: Buffer,
    signal: AbortSignal | undefined,
    hashInWorker: boolean,
  ) {
    this.loc = loc;
    this.finalPath = loc.url;
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const completion = COMPLETIONS.has(context.commandName ?? '');
        if (completion) {
          // the parts may all be uploaded when the backup fails or is interrupted: never complete then
          this.check();
          await this.refuseIfExists();
        }
        try {
          return await next(args);
        } catch (err) {
          const failure =
            completion && httpStatus(err) === 412
              ? new NbdsnapError('EXISTS', `${loc.url} appeared while the backup ran (not overwritten)`)
              : s3Error(err, `upload to ${loc.url} failed`);
          this.fail(failure);
          throw failure;
        }
      },
      { step: 'initialize', name: 'nbdsnapPendingObject' },
    );
    // SigV4 signs the part's SHA-256 (x-amz-content-sha256), the checksum just computed: reuse it
    // rather than hash every part a second time (a wrong value would only get the part refused)
    type Args = { request: unknown };
    const reuseChecksum = (next: (args: Args) => Promise<unknown>) => async (args: Args) => {
      const headers = (args.request as { headers?: Record<string, string> }).headers;
      const sum = headers?.['x-amz-checksum-sha256'];
      if (headers !== undefined && sum !== undefined && headers['x-amz-content-sha256'] === undefined)
        headers['x-amz-content-sha256'] = Buffer.from(sum, 'base64').toString('hex');
      return next(args);
    };
    client.middlewareStack.addRelativeTo(reuseChecksum as unknown as RelativeMiddleware, {
      relation: 'before',
      toMiddleware: 'httpSigningMiddleware',
      name: 'nbdsnapSignedChecksum',
    });
    this.upload = new MultipartUpload({
      s3,
      client,
      loc,
      partSize: PART_SIZE,
      inFlight: PARTS_IN_FLIGHT,
      contentType: 'application/octet-stream',
    });
    const sink: RecordSink = {
      writev: async (buffers) => {
        for (const b of buffers) {
          this.check();
          await this.upload.write(b);
        }
        this.check();
      },
      sync: async () => this.check(),
      // closing completes the upload: only when committing, else it is abandoned
      close: async () => {
        if (this.committing && this.failure === undefined) {
          this.done = this.upload.complete();
          this.done.catch((err) => this.fail(s3Error(err, `upload to ${loc.url} failed`)));
        } else this.fail(new NbdsnapError('EIO', `upload to ${loc.url} abandoned`));
      },
    };
    this.writer = RecordWriter.over(loc.url, sink, magic, hashInWorker);
    signal?.addEventListener('abort', () => this.fail(abortError(signal)), { once: true });
  }

  /** Refuses a URL whose bucket is missing or whose key exists; then starts the upload. */
  static async create(
    url: string,
    magic: Buffer,
    signal?: AbortSignal,
    hashInWorker = false,
  ): Promise<S3PendingObject> {
    const loc = parseS3Url(url);
    const { s3 } = await loadSdk();
    const check = await sharedClient();
    await checkBucket(check, loc);
    if ((await headObject(check, loc)) !== undefined)
      throw new NbdsnapError('EXISTS', `${url} already exists (not overwritten)`);
    signal?.throwIfAborted();
    return new S3PendingObject(loc, await newClient(), s3, magic, signal, hashInWorker);
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  /** Remember the first failure: the upload stops taking and sending parts. */
  private fail(err: Error): void {
    this.failure ??= err;
    this.upload.fail(this.failure);
  }

  private async refuseIfExists(): Promise<void> {
    if ((await headObject(await sharedClient(), this.loc)) !== undefined)
      throw new NbdsnapError('EXISTS', `${this.loc.url} appeared while the backup ran (not overwritten)`);
  }

  async commit(): Promise<Buffer> {
    this.committing = true;
    try {
      const digest = await this.writer.end();
      if (this.done === undefined) throw this.failure ?? new NbdsnapError('EIO', `upload to ${this.loc.url} abandoned`);
      await this.done;
      return digest;
    } catch (err) {
      const failure = this.failure ?? s3Error(err, `upload to ${this.loc.url} failed`);
      await this.discard();
      throw failure;
    }
  }

  /**
   * Give up: send nothing more, let the parts in flight finish, and abort the multipart upload
   * (an abort of an upload already gone is answered 404).
   */
  async discard(): Promise<void> {
    if (this.discarded) return;
    this.discarded = true;
    this.fail(new NbdsnapError('EIO', `upload to ${this.loc.url} abandoned`));
    await this.done?.catch(ignore);
    await this.upload.settled();
    const id = this.upload.uploadId;
    if (id === undefined) return;
    const { s3 } = await loadSdk();
    try {
      await (await sharedClient()).send(
        new s3.AbortMultipartUploadCommand({ Bucket: this.loc.bucket, Key: this.loc.key, UploadId: id }),
      );
    } catch (err) {
      if (httpStatus(err) === 404) return;
      process.stderr.write(
        `nbdsnap: could not abort the incomplete multipart upload ${id} of ${this.loc.url} ` +
          `(${s3Error(err, 'abort').message}); no object was written, but the bucket keeps its parts until ` +
          'it is aborted (aws s3api abort-multipart-upload) or a lifecycle rule removes it\n',
      );
    }
  }
}
