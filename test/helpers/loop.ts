/**
 * Loop devices for tests: `losetup -f --show [-o OFFSET] FILE`, detached by the caller in a
 * `finally`. Where none can be set up (no root, no /dev/loop-control, a container), the reason
 * is returned: the test skips with it, but fails under CI=true, where loop devices must work.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, truncateSync, writeFileSync } from 'node:fs';
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

/**
 * The first partition of a loop device, added with `partx -a` (BLKPG: works where the kernel
 * has no parser for the table), or the reason there is none. Remove with `removePartitions`.
 */
export function addPartitions(device: string): { partition: string } | { reason: string } {
  const r = spawnSync('partx', ['-a', device], { env: CLIENT_ENV, encoding: 'utf8' });
  const partition = `${device}p1`;
  if (r.status === 0 && existsSync(partition)) return { partition };
  const why = r.error?.message ?? (r.stderr?.trim() || `exit ${r.status}`);
  return { reason: `no partition device for ${device} (partx -a: ${why})` };
}

export function removePartitions(device: string): void {
  spawnSync('partx', ['-d', device], { env: CLIENT_ENV });
}

/** An image of `size` bytes with an MBR holding one Linux partition of `sectors` from `first`. */
export function mbrImage(path: string, size: number, first: number, sectors: number): string {
  const mbr = Buffer.alloc(512);
  mbr[446 + 4] = 0x83;
  mbr.writeUInt32LE(first, 446 + 8);
  mbr.writeUInt32LE(sectors, 446 + 12);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  writeFileSync(path, mbr);
  truncateSync(path, size);
  return path;
}
