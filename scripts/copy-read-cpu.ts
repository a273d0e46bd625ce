/**
 * copy-read-cpu.ts: CPU per read of snapshot reads of copied chunks against origin reads, in one
 * process without a network, as `copy-read-bench.ts` does, but with the reply buffers given back
 * to the pool as the server gives them back, a phase that reads each chunk once with no block
 * checksums kept (as after a restart: `snap-4k-cold`), and meant to run BUNDLED: through tsx,
 * every closure made costs a `__name` call, which the bundle does not make.
 * Load-independent figures: CPU microseconds per read (process.cpuUsage, all threads; "loop":
 * the event loop's own thread), medians of ROUNDS. Use it to compare two checkouts, alternating.
 *
 *   node_modules/.bin/esbuild scripts/copy-read-cpu.ts --bundle --platform=node --format=esm \
 *     --packages=external --outfile=node_modules/.cache/copy-read-cpu.mjs  (two levels down: the helper)
 *   node node_modules/.cache/copy-read-cpu.mjs [MiB=256] [ROUNDS=3]
 *   PHASES="origin-4k snap-4k snap-4k-cold origin-1m snap-1m"     the phases to run
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { give } from '../src/block/buffer-pool.ts';
import { FileDevice } from '../src/block/file-device.ts';
import { Logger } from '../src/log.ts';
import { ExportRegistry } from '../src/server/exports.ts';
import { copyReaderOf } from '../src/snapshot/copy-read.ts';
import { SnapshotManager } from '../src/snapshot/manager.ts';
import { StoreSpace } from '../src/store/space.ts';

const MIB = Number(process.argv[2] ?? 256);
const ROUNDS = Number(process.argv[3] ?? 3);
const PHASES = (process.env.PHASES ?? 'origin-4k snap-4k snap-4k-cold origin-1m snap-1m').split(' ');
const SIZE = MIB * 1024 * 1024;
const CHUNK = 64 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'ab-bench-'));
try {
  const img = join(dir, 'disk.img');
  writeFileSync(img, randomBytes(SIZE));
  const store = join(dir, 'store.img');
  writeFileSync(store, Buffer.alloc(0));
  truncateSync(store, SIZE + SIZE / 4 + 64 * 1024 * 1024);
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
  await manager.start();
  await manager.createSnapshot(['disk'], 's', false);
  const origin = registry.get('disk')?.device;
  const snap = registry.get('disk@s')?.device;
  if (origin === undefined || snap === undefined) throw new Error('no exports');
  const chunks = SIZE / CHUNK;
  const order = Array.from({ length: chunks }, (_, i) => i);
  for (let i = chunks - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [order[i], order[j]] = [order[j] as number, order[i] as number];
  }
  await pool(order, 32, (c) =>
    origin.write(c * CHUNK + 4096 * Math.floor(Math.random() * 16), randomBytes(4096), false),
  );
  await origin.flush();
  const cpu = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  };
  const loopCpu = () => {
    const f = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8')
      .replace(/^.*\) /, '')
      .split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  };
  const res: Record<string, number[]> = {};
  const measure = async (label: string, dev: typeof origin, bs: number, depth: number, random: boolean, n: number) => {
    if (!PHASES.includes(label)) return;
    if (label === 'snap-4k-cold') copyReaderOf(manager.store as never).cache.clear();
    const offsets = Array.from({ length: n }, (_, i) =>
      random ? Math.floor(Math.random() * (SIZE / bs)) * bs : (i * bs) % SIZE,
    );
    const c0 = cpu();
    const l0 = loopCpu();
    const t0 = performance.now();
    await pool(offsets, depth, (off) => dev.read(off, bs).then((b) => give(b)));
    const secs = cpu() - c0;
    const loop = loopCpu() - l0;
    const us = (secs / n) * 1e6;
    res[label] ??= [];
    res[label].push(us);
    console.log(
      `${label.padEnd(13)} ${us.toFixed(2).padStart(8)} us/read cpu (loop ${((loop / n) * 1e6).toFixed(2)})  wall ${((performance.now() - t0) / 1000).toFixed(2)} s`,
    );
  };
  for (let r = 0; r < ROUNDS; r++) {
    await measure('origin-4k', origin, 4096, 32, true, 200000);
    await measure('snap-4k', snap, 4096, 32, true, 200000);
    await measure('snap-4k-cold', snap, 4096, 32, true, chunks);
    await measure('origin-1m', origin, 1 << 20, 16, false, 4 * MIB);
    await measure('snap-1m', snap, 1 << 20, 16, false, 4 * MIB);
  }
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;
  console.log(
    'medians',
    Object.entries(res)
      .map(([k, v]) => `${k} ${med(v).toFixed(2)}`)
      .join('  '),
  );
  await manager.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}

async function pool<T>(items: T[], depth: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: depth }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}
