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
import { give } from '../src/block/buffer-pool.ts';
import { copyReaderOf } from '../src/snapshot/copy-read.ts';
import { CHUNK, copiedSnapshot, cpu, loopCpu, pool } from './copy-read-rig.ts';

const MIB = Number(process.argv[2] ?? 256);
const ROUNDS = Number(process.argv[3] ?? 3);
const PHASES = (process.env.PHASES ?? 'origin-4k snap-4k snap-4k-cold origin-1m snap-1m').split(' ');
const SIZE = MIB * 1024 * 1024;
const { manager, origin, snap, close } = await copiedSnapshot(SIZE, 'ab-bench-');
const chunks = SIZE / CHUNK;
try {
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
} finally {
  await close();
}
