/**
 * A real single-node Ceph for tests (scripts/ceph-cluster.sh): mon, mgr, one bluestore OSD on a
 * sparse file, radosgw (S3) and an RBD pool, on loopback. One cluster per test file, started in
 * beforeAll (about 20-30 s) and stopped in afterAll; a watcher stops it too if the test process
 * dies. RBD images are served over NBD by `qemu-nbd` through qemu's rbd driver, as a hypervisor
 * would; S3 requests are signed by curl (--aws-sigv4), so the tests need no SDK of their own.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLIENT_ENV, hasTool, ok, type RunResult, run } from './clients.ts';
import { CLI, ROOT, tempDir } from './server.ts';

export const CEPH_SCRIPT = join(ROOT, 'scripts/ceph-cluster.sh');

/** The binaries the harness runs (packages ceph-mon ceph-mgr ceph-osd radosgw ceph-common qemu-block-extra). */
export const CEPH_TOOLS = [
  'ceph-mon',
  'ceph-mgr',
  'ceph-osd',
  'radosgw',
  'ceph',
  'rbd',
  'radosgw-admin',
  'qemu-nbd',
  'curl',
];
const RBD_DRIVER = ['/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so', '/usr/lib/aarch64-linux-gnu/qemu/block-rbd.so'];

/** Why the cluster tests cannot run here, or undefined when they can. */
export function cephMissing(): string | undefined {
  const tools = CEPH_TOOLS.filter((t) => !hasTool(t));
  if (!RBD_DRIVER.some((p) => existsSync(p))) tools.push("qemu's rbd driver (qemu-block-extra)");
  return tools.length === 0 ? undefined : `Ceph is not installed here (missing: ${tools.join(', ')})`;
}

/**
 * Skip the cluster tests only outside CI and only when Ceph is missing; under CI=true they always
 * run (and fail loudly if Ceph is missing).
 */
export const CEPH_SKIP_REASON: string | undefined = process.env.CI === 'true' ? undefined : cephMissing();
export const CEPH_SKIP = CEPH_SKIP_REASON !== undefined;
if (CEPH_SKIP) console.warn(`cluster tests skipped: ${CEPH_SKIP_REASON}`);

export interface S3Settings {
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
}

/** An RBD image served by its own qemu-nbd. */
export interface ImageExport {
  image: string;
  port: number;
  /** nbd://127.0.0.1:PORT */
  uri: string;
  /** The qemu-nbd serving it now (changes at restart). */
  pid: number;
  /** Signal qemu-nbd by its pid (SIGKILL by default: a crash) and wait until it is gone. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Serve the image again on the same port (after kill). */
  restart(): Promise<void>;
}

export interface CephCluster {
  dir: string;
  pool: string;
  /** CEPH_CONF, and the standard AWS variables (AWS_ENDPOINT_URL_S3, keys, region) of the RGW user. */
  env: Record<string, string>;
  s3: S3Settings;
  createImage(name: string, size: number): Promise<void>;
  exportImage(name: string, opts?: { port?: number }): Promise<ImageExport>;
  /** The whole image, read by `rbd export` (not through NBD). */
  readImage(name: string): Promise<Buffer>;
  createBucket(name: string): Promise<void>;
  putObject(bucket: string, key: string, data: Buffer): Promise<void>;
  getObject(bucket: string, key: string): Promise<Buffer>;
  /** The keys under a prefix (ListObjectsV2, first 1000). */
  listObjects(bucket: string, prefix?: string): Promise<string[]>;
  /** `nbdsnap ARGS...` with the cluster's environment (S3 endpoint and keys). */
  nbdsnap(args: string[], timeoutMs?: number): Promise<RunResult>;
  /** `ceph-cluster.sh status`. */
  status(): Promise<string>;
  stop(): Promise<void>;
}

export interface StartCephOptions {
  /** Folder of the cluster (absent or empty); default a new temp folder, removed at stop. */
  dir?: string;
  /** The OSD's sparse file (default 10G; only what is written takes space). */
  osdSize?: string;
}

/** Start a cluster; throws with the daemons' last log lines if it cannot. */
export async function startCeph(opts: StartCephOptions = {}): Promise<CephCluster> {
  const temp = opts.dir === undefined ? tempDir('nbdsnap-ceph-') : undefined;
  const dir = opts.dir ?? join(temp?.path as string, 'ceph');
  const env = {
    CEPH_EXIT_WITH_PID: String(process.pid),
    ...(opts.osdSize === undefined ? {} : { CEPH_OSD_SIZE: opts.osdSize }),
  };
  const started = await run('bash', [CEPH_SCRIPT, 'start', dir], { env, timeoutMs: 300_000 });
  if (started.code !== 0) {
    await run('bash', [CEPH_SCRIPT, 'stop', dir], { timeoutMs: 120_000 });
    temp?.cleanup();
    throw new Error(`ceph-cluster.sh start failed (${started.code ?? started.signal}):\n${started.stderr}`);
  }
  const info = JSON.parse(readFileSync(join(dir, 'env.json'), 'utf8')) as {
    conf: string;
    pool: string;
    s3: S3Settings;
  };
  const s3 = info.s3;
  const clusterEnv: Record<string, string> = {
    CEPH_CONF: info.conf,
    AWS_ENDPOINT_URL_S3: s3.endpoint,
    AWS_ACCESS_KEY_ID: s3.accessKey,
    AWS_SECRET_ACCESS_KEY: s3.secretKey,
    AWS_REGION: s3.region,
  };
  const withEnv = { env: clusterEnv };
  // curl 7.88 does not send x-amz-content-sha256 itself, and RGW refuses the request without it
  const curl = (args: string[], input?: Buffer) =>
    spawnBuffer(
      'curl',
      [
        '-sS',
        '--fail-with-body',
        '--aws-sigv4',
        `aws:amz:${s3.region}:s3`,
        '--user',
        `${s3.accessKey}:${s3.secretKey}`,
        '-H',
        'x-amz-content-sha256: UNSIGNED-PAYLOAD',
        ...args,
      ],
      {},
      input,
    );
  const objectUrl = (bucket: string, key = '') =>
    `${s3.endpoint}/${encodeURIComponent(bucket)}/${key.split('/').map(encodeURIComponent).join('/')}`;
  let stopped = false;

  const exportImage = async (image: string, o: { port?: number } = {}): Promise<ImageExport> => {
    const serve = async (port: number) => {
      const uri = ok(
        await run('bash', [CEPH_SCRIPT, 'export', dir, image, String(port)], withEnv),
        `qemu-nbd rbd:${info.pool}/${image}`,
      ).trim();
      const pid = Number(readFileSync(join(dir, 'run', `qemu-nbd.${image}.${new URL(uri).port}.pid`), 'utf8').trim());
      return { uri, pid };
    };
    const first = await serve(o.port ?? 0);
    const port = Number(new URL(first.uri).port);
    const ex: ImageExport = {
      image,
      port,
      uri: first.uri,
      pid: first.pid,
      async kill(signal: NodeJS.Signals = 'SIGKILL') {
        await killAndWait(ex.pid, signal);
      },
      async restart() {
        // the port was just freed by kill; qemu-nbd sets SO_REUSEADDR, so it binds it again
        ex.pid = (await serve(port)).pid;
      },
    };
    return ex;
  };

  return {
    dir,
    pool: info.pool,
    env: clusterEnv,
    s3,
    async createImage(name, size) {
      ok(
        await run('rbd', ['create', '--size', `${Math.ceil(size / 1024)}K`, `${info.pool}/${name}`], withEnv),
        'rbd create',
      );
    },
    exportImage,
    readImage: (name) => spawnBuffer('rbd', ['export', '--no-progress', `${info.pool}/${name}`, '-'], clusterEnv),
    async createBucket(name) {
      await curl(['-X', 'PUT', objectUrl(name)]);
    },
    async putObject(bucket, key, data) {
      await curl(
        ['-X', 'PUT', '--data-binary', '@-', '-H', 'content-type: application/octet-stream', objectUrl(bucket, key)],
        data,
      );
    },
    getObject: (bucket, key) => curl([objectUrl(bucket, key)]),
    async listObjects(bucket, prefix = '') {
      const xml = (await curl([`${objectUrl(bucket)}?list-type=2&prefix=${encodeURIComponent(prefix)}`])).toString();
      return [...xml.matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => unescapeXml(m[1] as string));
    },
    nbdsnap: (args, timeoutMs = 120_000) => run(process.execPath, [CLI, ...args], { env: clusterEnv, timeoutMs }),
    async status() {
      return (await run('bash', [CEPH_SCRIPT, 'status', dir], { timeoutMs: 30_000 })).stdout;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      const r = await run('bash', [CEPH_SCRIPT, 'stop', dir], { timeoutMs: 120_000 });
      temp?.cleanup();
      if (r.code !== 0) throw new Error(`ceph-cluster.sh stop failed:\n${r.stderr}`);
    },
  };
}

/** `cmd args...` with binary stdout; rejects with stderr unless it exits 0. Killed after 2 min. */
function spawnBuffer(cmd: string, args: string[], env: Record<string, string>, input?: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...CLIENT_ENV, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out);
      if (code === 0) resolve(stdout);
      else
        reject(
          new Error(`${cmd} ${args.join(' ')}: exit ${code ?? signal}: ${err}${stdout.toString().slice(0, 2000)}`),
        );
    });
  });
}

/** True while `pid` runs (a zombie waiting for its reaper counts as gone). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Signal one pid (not our child: qemu-nbd forked) and wait until it is gone. */
async function killAndWait(pid: number, signal: NodeJS.Signals): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, signal);
  let deadline = Date.now() + 15_000;
  while (alive(pid)) {
    if (Date.now() > deadline) {
      process.kill(pid, 'SIGKILL');
      deadline = Infinity;
    }
    await sleep(20);
  }
}

function unescapeXml(s: string): string {
  return s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&amp;/g, '&');
}
