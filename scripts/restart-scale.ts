/**
 * A restart with COPIES live copied chunks (default 1,000,000): builds a persistent store in a
 * sparse file (64 KiB chunks: 1M copies take ~64 GiB of slots, never written) holding one device,
 * one snapshot and COPIES EXCEPTION records with real slots (through DiffStore's API, no chunk
 * data written), stops it cleanly, then times, each in a fresh child process:
 *
 * - `store`: DiffStore.open + replay + the slots claimed (the state a server serves from);
 * - `manager`: the snapshot manager's start over the sparse origin (exports registered);
 * - `checkpoint`: that start, then a checkpoint of the state (the time records are held back);
 * - `serve`: `nbdsnap serve` until it listens (its pid file), after the checkpoint.
 *
 * Prints JSON: {copies, restartSeconds, journalBytes, peakRss, ...} per step.
 *
 *   node --expose-gc --import tsx scripts/restart-scale.ts [COPIES] [DIR]
 *   ... restart-scale.ts --build COPIES DIR; COPIES=N ... restart-scale.ts --child STEP DIR
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileDevice } from '../src/block/file-device.ts';
import { Logger } from '../src/log.ts';
import { ExportRegistry } from '../src/server/exports.ts';
import { checkpointRecords } from '../src/snapshot/checkpoint.ts';
import { SnapshotManager } from '../src/snapshot/manager.ts';
import { replay } from '../src/snapshot/transition.ts';
import { checksum } from '../src/store/checksum.ts';
import type { JournalRecord } from '../src/store/records.ts';
import { StoreSpace } from '../src/store/space.ts';
import { DiffStore } from '../src/store/store.ts';

const CHUNK = 64 * 1024;
const [mode, arg, dirArg] = process.argv[2]?.startsWith('--')
  ? process.argv.slice(2)
  : ['--all', ...process.argv.slice(2)];
const COPIES = Number(mode === '--child' ? process.env.COPIES : (arg ?? 1_000_000));
const ORIGIN_CHUNKS = 2 ** Math.ceil(Math.log2(COPIES + 1));
const ORIGIN = ORIGIN_CHUNKS * CHUNK;

const rss = () => Math.round((process.resourceUsage().maxRSS * 1024) / 2 ** 20);

function sparse(path: string, size: number): string {
  writeFileSync(path, '');
  truncateSync(path, size);
  return path;
}

async function build(dir: string): Promise<void> {
  const origin = sparse(join(dir, 'origin.img'), ORIGIN);
  const store = sparse(join(dir, 'store.img'), 128 * 1024 + (COPIES + 4096) * CHUNK);
  void origin;
  const { store: s } = await DiffStore.open([StoreSpace.resolve(store)], { transient: false, chunkSize: CHUNK });
  const crc = checksum(Buffer.alloc(CHUNK)); // the slots read as zeros: the copies check
  await s.commit([
    { type: 'DEVICE', device: 1, size: ORIGIN, name: 'disk' },
    {
      type: 'SNAPSHOT',
      created: Date.now(),
      name: 's',
      members: [{ snapshot: 1, device: 1, seq: 1, writable: false }],
    },
  ]);
  const BATCH = 5000;
  for (let i = 0; i < COPIES; i += BATCH) {
    const records: JournalRecord[] = [];
    for (let j = i; j < Math.min(COPIES, i + BATCH); j++) {
      const slot = s.allocate();
      if (slot === undefined) throw new Error('store full');
      // Scattered chunks: j * an odd number modulo a power of two visits each chunk once.
      records.push({ type: 'EXCEPTION', device: 1, seq: 1, chunk: (j * 40503) % ORIGIN_CHUNKS, slot, crc });
    }
    await s.commit(records);
  }
  await s.close();
}

async function startManager(dir: string) {
  const device = await FileDevice.open(join(dir, 'origin.img'));
  const manager = new SnapshotManager(new ExportRegistry(), new Logger('warn'), {
    devices: [{ name: 'disk', device, description: '' }],
    store: [StoreSpace.resolve(join(dir, 'store.img'))],
    chunkSize: CHUNK,
    transient: false,
    lowSpacePercent: 1,
    readOnlyOrigins: false,
    cbtBlockSize: 0,
  });
  await manager.start();
  return { manager, device };
}

async function child(step: string, dir: string): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const cpu = () => {
    const c = process.cpuUsage(c0);
    return (c.user + c.system) / 1e6;
  };
  const out: Record<string, unknown> = { step, copies: COPIES };
  if (step === 'store') {
    const opened = await DiffStore.open([StoreSpace.resolve(join(dir, 'store.img'))], { transient: false });
    const cat = replay(opened.records, opened.store.chunkSize);
    for (const slot of cat.usedSlots()) opened.store.claim(slot);
    out.restartSeconds = (performance.now() - t0) / 1000;
    out.restartCpuSeconds = cpu();
    out.journalBytes = opened.store.journalBytes;
    out.records = opened.records.length;
    await opened.store.close();
  } else {
    const { manager, device } = await startManager(dir);
    out.restartSeconds = (performance.now() - t0) / 1000;
    out.restartCpuSeconds = cpu();
    const store = manager.store as DiffStore;
    out.journalBytes = store.journalBytes;
    if (step === 'checkpoint') {
      const t1 = performance.now();
      const c1 = cpu();
      const written = await store.checkpoint(checkpointRecords(manager.catalog));
      out.checkpointSeconds = (performance.now() - t1) / 1000;
      out.checkpointCpuSeconds = cpu() - c1;
      out.checkpointBytes = written?.bytes;
      out.checkpointRecords = written?.records;
    }
    await manager.close();
    await device.close();
  }
  out.peakRss = `${rss()} MiB`;
  return out;
}

async function serve(dir: string): Promise<Record<string, unknown>> {
  const cli = join(import.meta.dirname, '..', 'bin', 'nbdsnap.cjs');
  const pid = join(dir, 'pid');
  rmSync(pid, { force: true });
  const args = [cli, 'serve', `disk=${join(dir, 'origin.img')}`, '--store', join(dir, 'store.img')];
  const t0 = performance.now();
  const p = spawn(process.execPath, [...args, '--cbt-block-size', '0', '-p', '10899', '--pid-file', pid], {
    stdio: 'ignore',
  });
  while (!existsSync(pid) || readFileSync(pid, 'utf8').trim() === '') await new Promise((r) => setTimeout(r, 10));
  const seconds = (performance.now() - t0) / 1000;
  const status = readFileSync(`/proc/${p.pid}/status`, 'utf8');
  const hwm = /VmHWM:\s+(\d+) kB/.exec(status)?.[1];
  p.kill('SIGTERM');
  await new Promise((r) => p.on('exit', r));
  return { step: 'serve', copies: COPIES, restartSeconds: seconds, peakRssMiB: Math.round(Number(hwm) / 1024) };
}

if (mode === '--build') {
  // Keep the store in DIR (for profiling a step: --child STEP DIR with COPIES set).
  await build(dirArg as string);
} else if (mode === '--child') {
  const [step, dir] = [arg as string, dirArg as string];
  console.log(JSON.stringify(await child(step, dir)));
} else {
  const dir = mkdtempSync(join(dirArg ?? tmpdir(), 'nbdsnap-restart-'));
  try {
    const t = performance.now();
    await build(dir);
    console.error(`built ${COPIES} copies in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    const run = (step: string) =>
      JSON.parse(
        execFileSync(process.execPath, [...process.execArgv, import.meta.filename, '--child', step, dir], {
          env: { ...process.env, COPIES: String(COPIES) },
          encoding: 'utf8',
        }).trim(),
      );
    const runs: Record<string, unknown>[] = [];
    for (const step of ['store', 'manager', 'checkpoint', 'store', 'manager']) {
      runs.push(run(step));
      console.log(JSON.stringify(runs.at(-1)));
    }
    const served = await serve(dir);
    console.log(JSON.stringify(served));
    // Last line, for the benchmark: `nbdsnap serve` until listening, and the figures beside it.
    const [store, manager, checkpoint] = runs as Record<string, number>[];
    console.log(
      JSON.stringify({
        copies: COPIES,
        restartSeconds: served.restartSeconds,
        storeOpenSeconds: store?.restartSeconds,
        managerStartSeconds: manager?.restartSeconds,
        journalBytes: store?.journalBytes,
        checkpointSeconds: checkpoint?.checkpointSeconds,
        checkpointBytes: checkpoint?.checkpointBytes,
        peakRssMiB: served.peakRssMiB,
      }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
