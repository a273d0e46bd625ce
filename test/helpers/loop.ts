/**
 * Loop devices for tests: `losetup -f --show [-o OFFSET] FILE`, detached by the caller in a
 * `finally`. Where none can be set up (no root, no /dev/loop-control, a container), the reason
 * is returned: the test skips with it, but fails under CI=true, where loop devices must work.
 */
import { spawnSync } from 'node:child_process';
import { CLIENT_ENV } from './clients.ts';

export type LoopResult = { device: string } | { reason: string };

export function attachLoop(file: string, offset?: number): LoopResult {
  const args = ['-f', '--show', ...(offset === undefined ? [] : ['-o', String(offset)]), file];
  const r = spawnSync('losetup', args, { env: CLIENT_ENV, encoding: 'utf8' });
  const device = r.stdout?.trim() ?? '';
  if (r.status === 0 && device.startsWith('/dev/')) return { device };
  const why = r.error?.message ?? (r.stderr?.trim() || `exit ${r.status}`);
  return { reason: `no loop device could be set up (losetup ${args.join(' ')}: ${why})` };
}

export function detachLoop(device: string): void {
  spawnSync('losetup', ['-d', device], { env: CLIENT_ENV });
}

/** Skip (through `skip`) with the reason, or throw under CI=true. */
export function noLoop(reason: string, skip: (note: string) => never): never {
  if (process.env.CI === 'true') throw new Error(`${reason}; loop devices are required under CI=true`);
  return skip(reason);
}
