/**
 * s3://BUCKET/KEY parsing and the S3 settings taken from the environment (pure, no server).
 */
import { describe, expect, it } from 'vitest';
import { isS3Url, parseS3Url, s3Settings } from '../../src/backup/s3-url.ts';

describe('s3:// URLs', () => {
  it('splits the bucket from the key, which is taken literally', () => {
    expect(parseS3Url('s3://backups/disk/mon.nbk')).toEqual({
      bucket: 'backups',
      key: 'disk/mon.nbk',
      url: 's3://backups/disk/mon.nbk',
    });
    expect(parseS3Url('s3://my.bucket-1/a%20b c@d').key).toBe('a%20b c@d');
    expect(parseS3Url('S3://abc/k').bucket).toBe('abc');
  });

  it('tells S3 URLs from paths and other URLs', () => {
    expect(isS3Url('s3://b/k')).toBe(true);
    expect(isS3Url('mon.nbk')).toBe(false);
    expect(isS3Url('./s3://x')).toBe(false);
    expect(isS3Url('nbd://127.0.0.1:10809/disk')).toBe(false);
    expect(() => parseS3Url('/tmp/mon.nbk')).toThrow(/not an s3:\/\/BUCKET\/KEY URL/);
  });

  it('refuses a missing key, a folder, and bucket names S3 does not allow', () => {
    expect(() => parseS3Url('s3://backups')).toThrow(/no object key/);
    expect(() => parseS3Url('s3://backups/')).toThrow(/no object key/);
    expect(() => parseS3Url('s3://backups/disk/')).toThrow(/ends in "\/"/);
    expect(() => parseS3Url('s3://Backups/k')).toThrow(/bucket name "Backups"/);
    expect(() => parseS3Url('s3://ab/k')).toThrow(/bucket name/);
    expect(() => parseS3Url('s3:///k')).toThrow(/bucket name ""/);
    expect(() => parseS3Url(`s3://${'a'.repeat(64)}/k`)).toThrow(/bucket name/);
    expect(() => parseS3Url(`s3://abc/${'k'.repeat(1025)}`)).toThrow(/over 1024 bytes/);
  });
});

describe('S3 settings from the environment', () => {
  it('takes AWS_ENDPOINT_URL_S3 before AWS_ENDPOINT_URL, with path-style addressing and us-east-1', () => {
    expect(s3Settings({ AWS_ENDPOINT_URL: 'http://127.0.0.1:7480' })).toEqual({
      endpoint: 'http://127.0.0.1:7480',
      forcePathStyle: true,
      region: 'us-east-1',
    });
    expect(
      s3Settings({ AWS_ENDPOINT_URL: 'http://other:1', AWS_ENDPOINT_URL_S3: 'https://rgw.example:8443' }).endpoint,
    ).toBe('https://rgw.example:8443');
    expect(s3Settings({ AWS_ENDPOINT_URL: 'http://a:1', AWS_ENDPOINT_URL_S3: '' }).endpoint).toBe('http://a:1');
  });

  it('takes AWS_REGION before AWS_DEFAULT_REGION', () => {
    const env = { AWS_ENDPOINT_URL: 'http://a:1', AWS_REGION: 'eu-west-3', AWS_DEFAULT_REGION: 'us-west-2' };
    expect(s3Settings(env).region).toBe('eu-west-3');
    expect(s3Settings({ ...env, AWS_REGION: undefined }).region).toBe('us-west-2');
  });

  it('leaves AWS S3 itself to the SDK: no endpoint, virtual-hosted addressing, its own region chain', () => {
    expect(s3Settings({})).toEqual({ endpoint: undefined, forcePathStyle: false, region: undefined });
    expect(s3Settings({ AWS_DEFAULT_REGION: 'ap-south-1' })).toEqual({
      endpoint: undefined,
      forcePathStyle: false,
      region: 'ap-south-1',
    });
    expect(
      s3Settings({ AWS_ENDPOINT_URL: 'http://a:1', AWS_IGNORE_CONFIGURED_ENDPOINT_URLS: 'true' }).endpoint,
    ).toBeUndefined();
  });

  it('refuses an endpoint that is not an http(s) URL', () => {
    expect(() => s3Settings({ AWS_ENDPOINT_URL: 'ftp://127.0.0.1:7480' })).toThrow(/must be http/);
    expect(() => s3Settings({ AWS_ENDPOINT_URL: '127.0.0.1:7480' })).toThrow(
      /is not a URL \(give http:\/\/HOST:PORT\)/,
    );
  });
});
