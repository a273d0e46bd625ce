/**
 * The AWS SDK, loaded only when an `s3://` URL is used (every other command starts without it),
 * an S3 client built from the environment (s3-url.ts), and SDK errors turned into one-line
 * NbdsnapErrors.
 */
import type * as ClientS3 from '@aws-sdk/client-s3';
import { errorMessage, NbdsnapError } from '../errors.ts';
import { type S3Location, s3Settings } from './s3-url.ts';

export interface S3Sdk {
  s3: typeof ClientS3;
}

let sdk: Promise<S3Sdk> | undefined;
let shared: Promise<ClientS3.S3Client> | undefined;

export function loadSdk(): Promise<S3Sdk> {
  // The SDK warns on every start under Node 20 that later releases will need Node 22; the
  // versions pinned here run on Node 20.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  sdk ??= import('@aws-sdk/client-s3').then((s3) => ({ s3 }));
  return sdk;
}

/** A new client (one per upload: an upload adds its own middleware). */
export async function newClient(): Promise<ClientS3.S3Client> {
  const { s3 } = await loadSdk();
  const settings = s3Settings(process.env);
  return new s3.S3Client({
    ...(settings.endpoint === undefined ? {} : { endpoint: settings.endpoint }),
    ...(settings.region === undefined ? {} : { region: settings.region }),
    forcePathStyle: settings.forcePathStyle,
    // no response checksum checks on ranged reads: the backup format carries its own
    responseChecksumValidation: 'WHEN_REQUIRED',
    // a connection that stalls (e.g. RGW on a full cluster stops reading) fails after a minute of
    // inactivity (and is retried) instead of hanging the command
    requestHandler: { connectionTimeout: 10_000, socketTimeout: 60_000 },
  });
}

/** The process's client for reads and checks. */
export function sharedClient(): Promise<ClientS3.S3Client> {
  shared ??= newClient();
  return shared;
}

interface SdkError {
  name?: string;
  $metadata?: { httpStatusCode?: number };
}

export const httpStatus = (err: unknown): number | undefined => (err as SdkError | null)?.$metadata?.httpStatusCode;

/** An SDK failure as one NbdsnapError: `WHAT: NAME (HTTP n): message`. */
export function s3Error(err: unknown, what: string): NbdsnapError {
  if (err instanceof NbdsnapError) return err;
  const name = (err as SdkError | null)?.name ?? 'Error';
  const status = httpStatus(err);
  const message = errorMessage(err);
  const detail =
    `${name}${status === undefined ? '' : ` (HTTP ${status})`}` +
    (message === '' || message === name || message === 'UnknownError' ? '' : `: ${message}`);
  if (name === 'CredentialsProviderError' || /region is missing/i.test(message))
    return new NbdsnapError(
      'BAD_CONFIG',
      `${what}: ${message} (set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for an S3-compatible ` +
        'store, AWS_ENDPOINT_URL)',
      { cause: err },
    );
  if (status === 404 || name === 'NoSuchKey' || name === 'NoSuchBucket' || name === 'NotFound')
    return new NbdsnapError('NOT_FOUND', `${what}: ${detail}`, { cause: err });
  if (status === 403) return new NbdsnapError('EPERM', `${what}: ${detail}`, { cause: err });
  return new NbdsnapError('EIO', `${what}: ${detail}`, { cause: err });
}

export interface ObjectFacts {
  size: number;
  etag: string;
}

/** HeadObject: the object's size and ETag, or undefined if there is none under the key. */
export async function headObject(client: ClientS3.S3Client, loc: S3Location): Promise<ObjectFacts | undefined> {
  const { s3 } = await loadSdk();
  try {
    const h = await client.send(new s3.HeadObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    return { size: h.ContentLength ?? 0, etag: h.ETag ?? '' };
  } catch (err) {
    if (httpStatus(err) === 404) return undefined;
    throw s3Error(err, `cannot check ${loc.url}`);
  }
}

/** HeadBucket: refuses a bucket that does not exist or cannot be reached, with a clear message. */
export async function checkBucket(client: ClientS3.S3Client, loc: S3Location): Promise<void> {
  const { s3 } = await loadSdk();
  try {
    await client.send(new s3.HeadBucketCommand({ Bucket: loc.bucket }));
  } catch (err) {
    if (httpStatus(err) === 404) throw new NbdsnapError('NOT_FOUND', `${loc.url}: no bucket ${loc.bucket}`);
    throw s3Error(err, `cannot reach bucket ${loc.bucket}`);
  }
}
