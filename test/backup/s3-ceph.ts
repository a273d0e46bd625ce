/**
 * Starting RGW for the S3 tests. NBDSNAP_TEST_S3_ENV=DIR/env.sh reuses a running cluster
 * (development); otherwise a single-node Ceph is started in a temporary folder and stopped after.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { run } from '../helpers/clients.ts';
import { tempDir } from '../helpers/server.ts';
import type { S3Endpoint } from './s3-rig.ts';

const SCRIPT = '/work/shared/ceph/micro-ceph.sh';
const BINARIES = ['ceph-mon', 'ceph-mgr', 'ceph-osd', 'radosgw', 'radosgw-admin'];

export function cephMissing(): string | undefined {
  if (process.env.NBDSNAP_TEST_S3_ENV !== undefined) return undefined;
  const missing = BINARIES.filter(
    (b) => spawnSync('sh', ['-c', `command -v ${b}`], { env: { PATH: '/usr/bin:/usr/sbin:/bin:/sbin' } }).status !== 0,
  );
  return missing.length === 0 ? undefined : `Ceph is not installed (${missing.join(', ')} missing)`;
}

function parseEnv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of text.matchAll(/([A-Z0-9_]+)=(\S+)/g)) out[m[1] as string] = m[2] as string;
  return out;
}

function endpointOf(env: Record<string, string>, stop: () => Promise<void>): S3Endpoint {
  const endpoint = env.S3_ENDPOINT;
  const accessKeyId = env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = env.AWS_SECRET_ACCESS_KEY;
  if (endpoint === undefined || accessKeyId === undefined || secretAccessKey === undefined)
    throw new Error(`no S3 endpoint or keys in ${JSON.stringify(env)}`);
  return { endpoint, accessKeyId, secretAccessKey, stop };
}

export async function startCeph(): Promise<S3Endpoint> {
  const reuse = process.env.NBDSNAP_TEST_S3_ENV;
  if (reuse !== undefined) return endpointOf(parseEnv(readFileSync(reuse, 'utf8')), async () => undefined);
  const dir = tempDir('nbdsnap-s3-ceph-');
  const port = 3400 + Math.floor(Math.random() * 500);
  const env = { MON_PORT: String(port), RGW_PORT: String(port + 4000), NBD_PORT: '0', OSD_SIZE: '4G' };
  const stop = async () => {
    await run('bash', [SCRIPT, 'stop', dir.path], { env, timeoutMs: 60_000 });
    dir.cleanup();
  };
  const r = await run('bash', [SCRIPT, 'start', dir.path], { env, timeoutMs: 240_000 });
  if (r.code !== 0) {
    await stop();
    throw new Error(`Ceph did not start:\n${r.stderr}`);
  }
  return endpointOf(parseEnv(r.stdout), stop);
}
