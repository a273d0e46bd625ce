/**
 * The journal's size over cycles of (create a snapshot, WRITES scattered first writes, delete it),
 * in process (the snapshot manager over a sparse origin file and a sparse store file, 64 KiB
 * chunks), with change tracking of CBT-byte blocks (0: off). Prints the journal's bytes after
 * each cycle, then stops, restarts and checks that the replayed state is the one it had.
 *
 *   node --import tsx scripts/journal-cycles.ts [CYCLES=10] [WRITES=2000] [CBT=0]
 */
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { FileDevice } from '../src/block/file-device.ts';
import { Logger } from '../src/log.ts';
import { ExportRegistry } from '../src/server/exports.ts';
import { describeCatalog } from '../src/snapshot/checkpoint.ts';
import { SnapshotManager } from '../src/snapshot/manager.ts';
import { StoreSpace } from '../src/store/space.ts';

const CYCLES = Number(process.argv[2] ?? 10);
const WRITES = Number(process.argv[3] ?? 2000);
const CBT = Number(process.argv[4] ?? 0);
const CHUNK = 64 * 1024;
const ORIGIN = 16 * 2 ** 30;
const STORE = 128 * 1024 + (2 * WRITES + 4096) * CHUNK;

const dir = mkdtempSync(join(tmpdir(), 'nbdsnap-cycles-'));
const sparse = (name: string, size: number) => {
  const path = join(dir, name);
  writeFileSync(path, '');
  truncateSync(path, size);
  return path;
};
const originPath = sparse('origin.img', ORIGIN);
const storePath = sparse('store.img', STORE);
let seed = 7;
const random = () => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return seed / 2 ** 32;
};

async function start() {
  const device = await FileDevice.open(originPath);
  const registry = new ExportRegistry();
  const log = new Logger(process.env.LOG === '1' ? 'info' : 'warn');
  const manager = new SnapshotManager(registry, log, {
    devices: [{ name: 'disk', device, description: '' }],
    store: [StoreSpace.resolve(storePath)],
    chunkSize: CHUNK,
    transient: false,
    lowSpacePercent: 1,
    readOnlyOrigins: false,
    cbtBlockSize: CBT,
  });
  await manager.start();
  return { manager, registry, device };
}

try {
  const { manager, registry, device } = await start();
  const disk = registry.get('disk')?.device;
  if (disk === undefined) throw new Error('no export');
  const sizes: number[] = [];
  const data = Buffer.alloc(4096, 0xab);
  for (let c = 1; c <= CYCLES; c++) {
    await manager.createSnapshot(['disk'], `c${c}`, false);
    for (let i = 0; i < WRITES; i += 32) {
      await Promise.all(
        Array.from({ length: Math.min(32, WRITES - i) }, () =>
          disk.write(Math.floor(random() * (ORIGIN / CHUNK)) * CHUNK, data, false),
        ),
      );
    }
    await manager.deleteSnapshot('disk', `c${c}`);
    sizes.push(manager.store?.journalBytes ?? 0);
  }
  const before = describeCatalog(manager.catalog);
  await manager.close();
  await device.close();
  const t = performance.now();
  const again = await start();
  const restartMs = performance.now() - t;
  const same = isDeepStrictEqual(describeCatalog(again.manager.catalog), before);
  await again.manager.close();
  await again.device.close();
  console.log(
    JSON.stringify({
      cycles: CYCLES,
      writes: WRITES,
      cbtBlockSize: CBT,
      journalBytes: sizes,
      ratio: Number(((sizes.at(-1) ?? 0) / (sizes[0] ?? 1)).toFixed(2)),
      restartMs: Math.round(restartMs),
      sameStateAfterRestart: same,
    }),
  );
  if (!same) process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
