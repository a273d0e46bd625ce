/**
 * copy-read-rig.ts: what copy-read-bench.ts and copy-read-cpu.ts share. A random-content image of
 * MiB, a store, one snapshot `s`, every chunk copied by a 4 KiB first write in random chunk order
 * (as the bench's snapshot section); the process's and the event loop's CPU; a QD-N work pool.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlockDevice } from '../src/block/device.ts';
import { FileDevice } from '../src/block/file-device.ts';
import { Logger } from '../src/log.ts';
import { ExportRegistry } from '../src/server/exports.ts';
import { SnapshotManager } from '../src/snapshot/manager.ts';
import { StoreSpace } from '../src/store/space.ts';

export const CHUNK = 64 * 1024;

export interface CopiedSnapshot {
  manager: SnapshotManager;
  origin: BlockDevice;
  snap: BlockDevice;
  /** Stop the manager and remove the files. */
  close(): Promise<void>;
}

/** The rig, in a new temporary folder named from `prefix`. */
export async function copiedSnapshot(size: number, prefix: string): Promise<CopiedSnapshot> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const img = join(dir, 'disk.img');
  writeFileSync(img, randomBytes(size));
  const store = join(dir, 'store.img');
  writeFileSync(store, Buffer.alloc(0));
  truncateSync(store, size + size / 4 + 64 * 1024 * 1024);
  const device = await FileDevice.open(img);
  const registry = new ExportRegistry();
  const manager = new SnapshotManager(registry, new Logger('error'), {
    devices: [{ name: 'disk', device, description: '' }],
    store: [StoreSpace.resolve(store)],
    transient: false,
    lowSpacePercent: 1,
    readOnlyOrigins: false,
    cbtBlockSize: 0,
  });
  const close = async () => {
    try {
      await manager.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  try {
    await manager.start();
    await manager.createSnapshot(['disk'], 's', false);
    const origin = registry.get('disk')?.device;
    const snap = registry.get('disk@s')?.device;
    if (origin === undefined || snap === undefined) throw new Error('no exports');
    const chunks = size / CHUNK;
    const order = Array.from({ length: chunks }, (_, i) => i);
    for (let i = chunks - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [order[i], order[j]] = [order[j] as number, order[i] as number];
    }
    await pool(order, 32, (c) =>
      origin.write(c * CHUNK + 4096 * Math.floor(Math.random() * 16), randomBytes(4096), false),
    );
    await origin.flush();
    return { manager, origin, snap, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/** CPU seconds of the whole process (all threads). */
export function cpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** CPU seconds of the event loop's own thread (utime + stime of the main task; the rest ran on the pool). */
export function loopCpu(): number {
  const f = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8')
    .replace(/^.*\) /, '')
    .split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

/** `fn` over `items`, `depth` at a time. */
export async function pool<T>(items: T[], depth: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: depth }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}
