/**
 * copy-read-bench.ts: CPU time of snapshot reads of copied chunks against origin reads, in one
 * process, without a network (load-independent: CPU seconds per GiB read, from process.cpuUsage).
 * A random-content image, a store, one snapshot, every chunk copied by a 4 KiB first write in
 * random chunk order (as the bench's snapshot section), then QD32 4 KiB random reads and QD16
 * 1 MiB sequential reads of the origin and of the snapshot, alternating, ROUNDS times. The CPU
 * of the event loop's thread alone is shown beside the process's (the rest ran on the pool).
 *
 *   node --import tsx scripts/copy-read-bench.ts [MiB=256] [ROUNDS=3]
 *   PROFILE_PHASE=snap-1m ...   writes snap-1m.cpuprofile of that phase (last round)
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { copiedSnapshot, cpu, loopCpu, pool } from './copy-read-rig.ts';

const session = new Session();
session.connect();
const profiler = (method: string) =>
  new Promise((resolve, reject) => session.post(method, (err, res) => (err ? reject(err) : resolve(res))));
await profiler('Profiler.enable');
const MIB = Number(process.argv[2] ?? 256);
const ROUNDS = Number(process.argv[3] ?? 3);
const SIZE = MIB * 1024 * 1024;
const { origin, snap, close } = await copiedSnapshot(SIZE, 'copy-read-bench-');
try {
  const measure = async (label: string, dev: typeof origin, bs: number, depth: number, random: boolean, n: number) => {
    const profiling = process.env.PROFILE_PHASE === label;
    if (profiling) await profiler('Profiler.start');
    const offsets = Array.from({ length: n }, (_, i) =>
      random ? Math.floor(Math.random() * (SIZE / bs)) * bs : (i * bs) % SIZE,
    );
    const c0 = cpu();
    const l0 = loopCpu();
    const t0 = performance.now();
    await pool(offsets, depth, (off) => dev.read(off, bs).then(() => undefined));
    const secs = cpu() - c0;
    const loop = loopCpu() - l0;
    if (profiling) {
      const { profile } = (await profiler('Profiler.stop')) as { profile: unknown };
      writeFileSync(`${label}.cpuprofile`, JSON.stringify(profile));
    }
    const gib = (n * bs) / 2 ** 30;
    console.log(
      `${label.padEnd(10)} cpu ${(secs / gib).toFixed(2).padStart(6)} s/GiB (event loop ${(loop / gib).toFixed(2).padStart(5)})  ${((secs / n) * 1e6).toFixed(1).padStart(7)} us/read  wall ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
  };
  for (let r = 0; r < ROUNDS; r++) {
    await measure('origin-4k', origin, 4096, 32, true, 40000);
    await measure('snap-4k', snap, 4096, 32, true, 40000);
    await measure('origin-1m', origin, 1 << 20, 16, false, 2 * MIB);
    await measure('snap-1m', snap, 1 << 20, 16, false, 2 * MIB);
  }
} finally {
  await close();
}
