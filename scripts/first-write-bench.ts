/**
 * first-write-bench.ts: the copy-before-write path in process, without sockets or a client, so
 * that its CPU cost per first write can be measured on a loaded machine (wall-clock ratios are
 * noise there). An origin file, a store file, one snapshot, then one 4 KiB write at a random
 * block of every chunk in random order, QD in flight (as the bench's fio_w4k replay), through
 * the origin export's device (the COW layer and everything below it).
 *
 *   node --import tsx scripts/first-write-bench.ts [--size MiB] [--qd N] [--rounds N] [--dir D]
 *
 * Prints per round: first writes/s, CPU per write of the whole process and of the event loop's
 * thread (utime+stime, /proc; --threads: of every thread), the store's syncs (native writeAndSync
 * jobs, and the journal's syncs of batches without copies) and first writes per sync.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileDevice } from '../src/block/file-device.ts';
import { native } from '../src/block/native.ts';
import { Logger } from '../src/log.ts';
import { ExportRegistry } from '../src/server/exports.ts';
import { SnapshotManager } from '../src/snapshot/manager.ts';
import { StoreSpace } from '../src/store/space.ts';

const arg = (name: string, dflt: number | string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] as string) : String(dflt);
};
const MiB = 1024 * 1024;
const size = Number(arg('size', 512)) * MiB;
const qd = Number(arg('qd', 32));
const rounds = Number(arg('rounds', 2));
const chunk = 64 * 1024;
const dir = mkdtempSync(join(arg('dir', tmpdir()), 'nbdsnap-fwbench-'));

let jobs = 0;
let copies = 0;
const run = native?.writeAndSync;
if (native !== undefined && run !== undefined) {
  native.writeAndSync = (fd, buffers, offsets, dataCount, syncFds, done, ...rest) => {
    jobs += 1;
    copies += dataCount;
    (run as (...a: unknown[]) => void)(fd, buffers, offsets, dataCount, syncFds, done, ...rest);
  };
}

// The journal's other syncs (a batch without copies: change tracking alone; a new journal block).
const spaceSync = StoreSpace.prototype.sync;
let plainSyncs = 0;
StoreSpace.prototype.sync = function (this: StoreSpace) {
  plainSyncs += 1;
  return spaceSync.call(this);
};

const hz = 100;
/** CPU seconds of each thread of this process, by thread name (summed). */
function threads(): Map<string, number> {
  const out = new Map<string, number>();
  for (const t of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${t}/stat`, 'utf8');
      const name = t === String(process.pid) ? 'event loop' : `tid ${t}`;
      const f = stat.replace(/^.*\) /, '').split(' ');
      out.set(name, (out.get(name) ?? 0) + (Number(f[11]) + Number(f[12])) / hz);
    } catch {
      // the thread ended
    }
  }
  return out;
}

function cpu(task?: number): number {
  const path = task === undefined ? '/proc/self/stat' : `/proc/self/task/${task}/stat`;
  const f = readFileSync(path, 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(f[11]) + Number(f[12])) / hz;
}

async function main(): Promise<void> {
  const img = join(dir, 'origin.img');
  const block = Buffer.alloc(MiB, 0x5a);
  writeFileSync(img, '');
  for (let at = 0; at < size; at += MiB) writeFileSync(img, block, { flag: 'a' });
  const store = join(dir, 'store.img');
  writeFileSync(store, '');
  truncateSync(store, size + size / 4 + 64 * MiB);
  const device = await FileDevice.open(img);
  const registry = new ExportRegistry();
  const manager = new SnapshotManager(registry, new Logger('silent'), {
    devices: [{ name: 'dev', device, description: '' }],
    store: [StoreSpace.resolve(store)],
    chunkSize: chunk,
    transient: false,
    lowSpacePercent: 1,
    readOnlyOrigins: false,
    cbtBlockSize: 64 * 1024, // the serve default: a first write after a snapshot also records a CBT block
  });
  await manager.start();
  const origin = registry.get('dev')?.device;
  if (origin === undefined) throw new Error('no origin export');
  const n = size / chunk;
  const data = Buffer.alloc(4096, 0xa5);
  for (let r = 1; r <= rounds; r++) {
    await manager.createSnapshot(['dev'], `s${r}`, false);
    const order = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [order[i], order[j]] = [order[j] as number, order[i] as number];
    }
    jobs = 0;
    copies = 0;
    plainSyncs = 0;
    const th0 = threads();
    const c0 = cpu();
    const l0 = cpu(process.pid);
    const t0 = performance.now();
    let next = 0;
    const worker = async () => {
      while (next < n) {
        const c = order[next++] as number;
        await origin.write(c * chunk + 4096 * Math.floor(Math.random() * 16), data, false);
      }
    };
    await Promise.all(Array.from({ length: qd }, worker));
    const ms = performance.now() - t0;
    const c1 = cpu();
    const th1 = threads();
    const l1 = cpu(process.pid);
    const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    console.log(
      `round ${r}: ${((n * 1000) / ms).toFixed(0)} writes/s, cpu ${(((c1 - c0) * 1e6) / n).toFixed(0)} us/write ` +
        `(loop ${(((l1 - l0) * 1e6) / n).toFixed(0)}), ${jobs + plainSyncs} syncs (${plainSyncs} without copies), ${(n / Math.max(1, jobs + plainSyncs)).toFixed(1)} writes/sync, ${(copies / Math.max(1, jobs)).toFixed(1)} copies/copy batch, load ${load}`,
    );
    if (process.argv.includes('--threads'))
      for (const [name, v] of th1) console.log(`  ${name}: ${(((v - (th0.get(name) ?? 0)) * 1e6) / n).toFixed(0)} us/write`);
    await manager.deleteSnapshot('dev', `s${r}`);
  }
  await manager.close();
  await device.close();
  rmSync(dir, { recursive: true, force: true });
}

main().catch((err) => {
  console.error(err);
  rmSync(dir, { recursive: true, force: true });
  process.exit(1);
});
