/**
 * `s3://BUCKET/KEY` names and the S3 settings from the environment (pure: no SDK, no I/O).
 *
 * The endpoint comes from `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` (the variables the AWS
 * SDKs and CLI read; `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true` ignores both), and whenever one
 * is set, addressing is path-style (`http://HOST/BUCKET/KEY`: Ceph RGW, MinIO and other
 * S3-compatible stores rarely have wildcard DNS for virtual-hosted buckets). The region comes
 * from `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1` when an endpoint is set (RGW
 * accepts any region in the signature; its default zonegroup answers to us-east-1); without an
 * endpoint and a region the SDK's own chain (~/.aws/config) decides. Credentials are left to the
 * SDK's default chain, which reads `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
 * `AWS_SESSION_TOKEN` first.
 */
import { NbdsnapError } from '../errors.ts';

export interface S3Location {
  bucket: string;
  key: string;
  /** `s3://BUCKET/KEY`, as given. */
  url: string;
}

export interface S3Settings {
  endpoint: string | undefined;
  forcePathStyle: boolean;
  region: string | undefined;
}

export const isS3Url = (s: string): boolean => /^s3:\/\//i.test(s);

/**
 * `s3://BUCKET/KEY`: the key is taken literally (no percent-decoding, as `aws s3` does). A
 * bucket name is 3 to 63 lowercase letters, digits, dots and hyphens (S3's rule); a key is not
 * empty and does not end in `/` (that names a folder, not an object).
 */
export function parseS3Url(url: string): S3Location {
  if (!isS3Url(url)) throw new NbdsnapError('BAD_ARGUMENT', `${url} is not an s3://BUCKET/KEY URL`);
  const rest = url.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const key = slash < 0 ? '' : rest.slice(slash + 1);
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket))
    throw new NbdsnapError(
      'BAD_ARGUMENT',
      `${url}: bucket name "${bucket}" is not 3-63 lowercase letters, digits, dots or hyphens`,
    );
  if (key === '') throw new NbdsnapError('BAD_ARGUMENT', `${url}: no object key (give s3://${bucket}/KEY)`);
  if (key.endsWith('/'))
    throw new NbdsnapError('BAD_ARGUMENT', `${url}: the key ends in "/" (a folder, not an object)`);
  if (Buffer.byteLength(key) > 1024) throw new NbdsnapError('BAD_ARGUMENT', `${url}: the key is over 1024 bytes`);
  return { bucket, key, url };
}

const nonEmpty = (v: string | undefined): string | undefined =>
  v === undefined || v.trim() === '' ? undefined : v.trim();

/** The endpoint, addressing style and region the environment asks for. */
export function s3Settings(env: Record<string, string | undefined>): S3Settings {
  const ignore = (env.AWS_IGNORE_CONFIGURED_ENDPOINT_URLS ?? '').toLowerCase() === 'true';
  const endpoint = ignore ? undefined : (nonEmpty(env.AWS_ENDPOINT_URL_S3) ?? nonEmpty(env.AWS_ENDPOINT_URL));
  if (endpoint !== undefined) {
    let u: URL;
    try {
      u = new URL(endpoint);
    } catch {
      throw new NbdsnapError('BAD_CONFIG', `S3 endpoint ${endpoint} is not a URL (give http://HOST:PORT)`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:')
      throw new NbdsnapError('BAD_CONFIG', `S3 endpoint ${endpoint} must be http:// or https://`);
  }
  const region =
    nonEmpty(env.AWS_REGION) ?? nonEmpty(env.AWS_DEFAULT_REGION) ?? (endpoint === undefined ? undefined : 'us-east-1');
  return { endpoint, forcePathStyle: endpoint !== undefined, region };
}
