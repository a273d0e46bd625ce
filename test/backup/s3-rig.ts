/**
 * An S3 endpoint for the backup tests: RGW of a throwaway single-node Ceph (test/helpers/ceph.ts),
 * with an SDK client for the tests' own checks (buckets, listings of multipart uploads,
 * tampering), the environment a `nbdsnap` child needs to reach it, a misbehaving proxy, and a
 * peak-RSS probe for child processes.
 *
 * Outside CI the S3 tests skip, saying why, when Ceph is missing; under CI=true they never skip
 * (a missing Ceph fails them). NBDSNAP_TEST_S3_ENV=FILE (lines `S3_ENDPOINT=...
 * AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...`) reuses a running RGW instead (development).
 */
import { readFileSync } from 'node:fs';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { CreateBucketCommand, HeadObjectCommand, ListMultipartUploadsCommand, S3Client } from '@aws-sdk/client-s3';
import { CEPH_SKIP_REASON, startCeph } from '../helpers/ceph.ts';
import { type RunResult, run } from '../helpers/clients.ts';
import { CLI } from '../helpers/server.ts';

export interface S3Endpoint {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  stop(): Promise<void>;
}

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Why the S3 tests cannot run here (undefined: they can; never a reason under CI=true). */
export function s3SkipReason(): string | undefined {
  return process.env.NBDSNAP_TEST_S3_ENV === undefined ? CEPH_SKIP_REASON : undefined;
}

export async function startS3(): Promise<S3Endpoint> {
  const reuse = process.env.NBDSNAP_TEST_S3_ENV;
  if (reuse !== undefined) {
    const v = Object.fromEntries(
      [...readFileSync(reuse, 'utf8').matchAll(/([A-Z0-9_]+)=(\S+)/g)].map((m) => [m[1], m[2]]),
    );
    return {
      endpoint: String(v.S3_ENDPOINT),
      accessKeyId: String(v.AWS_ACCESS_KEY_ID),
      secretAccessKey: String(v.AWS_SECRET_ACCESS_KEY),
      stop: async () => undefined,
    };
  }
  const ceph = await startCeph();
  return {
    endpoint: ceph.s3.endpoint,
    accessKeyId: ceph.s3.accessKey,
    secretAccessKey: ceph.s3.secretKey,
    stop: () => ceph.stop(),
  };
}

/** The environment of a `nbdsnap` child talking to `ep`: endpoint and keys, no region, no profile. */
export function childEnv(ep: S3Endpoint, endpoint = ep.endpoint): Record<string, string | undefined> {
  return {
    AWS_ENDPOINT_URL: endpoint,
    AWS_ENDPOINT_URL_S3: undefined,
    AWS_ACCESS_KEY_ID: ep.accessKeyId,
    AWS_SECRET_ACCESS_KEY: ep.secretAccessKey,
    AWS_SESSION_TOKEN: undefined,
    AWS_REGION: undefined,
    AWS_DEFAULT_REGION: undefined,
    AWS_PROFILE: undefined,
    AWS_CONFIG_FILE: '/nonexistent',
    AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
  };
}

export function testClient(ep: S3Endpoint): S3Client {
  return new S3Client({
    endpoint: ep.endpoint,
    forcePathStyle: true,
    region: 'us-east-1',
    credentials: { accessKeyId: ep.accessKeyId, secretAccessKey: ep.secretAccessKey },
  });
}

export async function createBucket(c: S3Client, prefix: string): Promise<string> {
  const bucket = `${prefix}-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6).toString(36)}`;
  await c.send(new CreateBucketCommand({ Bucket: bucket }));
  return bucket;
}

/** HeadObject's ETag, or undefined when there is no object under the key. */
export async function etagOf(c: S3Client, bucket: string, key: string): Promise<string | undefined> {
  try {
    return (await c.send(new HeadObjectCommand({ Bucket: bucket, Key: key }))).ETag ?? '';
  } catch (err) {
    if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return undefined;
    throw err;
  }
}

/** Multipart uploads in progress for `key` (ListMultipartUploads). */
export async function uploadsOf(c: S3Client, bucket: string, key: string): Promise<string[]> {
  const r = await c.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: key }));
  return (r.Uploads ?? []).filter((u) => u.Key === key).map((u) => u.UploadId ?? '');
}

/** `nbdsnap ARGS...` as a child with `env`. */
export function nbdsnapWith(env: Record<string, string | undefined>, args: string[], timeoutMs = 180_000) {
  return run(process.execPath, [CLI, ...args], { env, timeoutMs });
}

/** The peak RSS (VmHWM, bytes) of a running process, sampled until it exits. */
export async function peakRss(pid: number, exited: Promise<unknown>): Promise<number> {
  let peak = 0;
  let done = false;
  void exited.then(() => {
    done = true;
  });
  while (!done) {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m !== null) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {
      break; // gone
    }
    await sleep(20);
  }
  return peak;
}

export type { RunResult };

/**
 * A TCP proxy in front of the S3 endpoint that misbehaves on purpose, per connection, once the
 * client has sent `at` bytes on it: 'stall' holds everything after that until `release()`;
 * 'flip' inverts that one byte (inside a part's body: the server must refuse the part).
 */
export class FaultyProxy {
  readonly port: number;
  stalled = 0;
  private released = false;
  private readonly waiting: (() => void)[] = [];
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  private constructor(server: Server, port: number) {
    this.server = server;
    this.port = port;
  }

  static async start(target: string, mode: 'stall' | 'flip', at: number): Promise<FaultyProxy> {
    const u = new URL(target);
    let proxy: FaultyProxy | undefined;
    const server = createServer((client) => {
      const p = proxy as FaultyProxy;
      const up = connect(Number(u.port), u.hostname);
      p.sockets.add(client).add(up);
      let seen = 0;
      const forward = (d: Buffer) => {
        if (!up.write(d)) {
          client.pause();
          up.once('drain', () => client.resume());
        }
      };
      client.on('data', (chunk: Buffer) => {
        let d = chunk;
        const crosses = seen <= at && seen + d.length > at;
        if (crosses && mode === 'flip') {
          d = Buffer.from(d);
          d[at - seen] = (d[at - seen] as number) ^ 0xff;
        }
        seen += d.length;
        if (mode === 'stall' && seen > at && !p.released) {
          client.pause();
          if (crosses) p.stalled++;
          p.waiting.push(() => {
            forward(d);
            client.resume();
          });
          return;
        }
        forward(d);
      });
      up.pipe(client);
      const end = () => {
        client.destroy();
        up.destroy();
      };
      for (const s of [client, up]) {
        s.on('error', end);
        s.on('close', end);
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new FaultyProxy(server, (server.address() as AddressInfo).port);
    return proxy;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Let every stalled connection go on (and never stall again). */
  release(): void {
    this.released = true;
    for (const w of this.waiting.splice(0)) w();
  }

  async close(): Promise<void> {
    this.release();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
