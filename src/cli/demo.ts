/**
 * `nbdsnap demo`: the zero-argument way to see nbdsnap work. Creates (once) a 64 MiB sparse demo
 * image with a few recognisable blocks and a 64 MiB difference store, serves the image with a
 * control socket, and takes a snapshot `demo@initial` if there is none yet, so both the origin
 * and a point-in-time view are there to connect to.
 */
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LogLevel } from '../log.ts';
import { STORE_VERSION } from '../store/label.ts';
import { serve } from './serve.ts';

const DEMO_SIZE = 64 * 1024 * 1024;

function sparseFile(path: string, blocks: [number, string][]): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, DEMO_SIZE);
  for (const [offset, text] of blocks) writeSync(fd, Buffer.alloc(1024 * 1024, text), 0, 1024 * 1024, offset);
  closeSync(fd);
}

export async function demo(opts: { dir?: string | undefined; port: number; logLevel: LogLevel }): Promise<void> {
  // One folder per store format: a demo left by an nbdsnap of another format is not reused.
  const dir = opts.dir ?? join(tmpdir(), `nbdsnap-demo-v${STORE_VERSION}`);
  const image = join(dir, 'demo.img');
  const store = join(dir, 'demo-store.img');
  const control = join(dir, 'control.sock');
  if (!existsSync(image)) {
    mkdirSync(dir, { recursive: true });
    // Three data regions in an otherwise sparse image, so `nbdinfo --map` has something to show.
    sparseFile(image, [
      [0, 'nbdsnap demo device: block 0\n'],
      [16 * 1024 * 1024, 'nbdsnap demo device: 16 MiB\n'],
      [48 * 1024 * 1024, 'nbdsnap demo device: 48 MiB\n'],
    ]);
    sparseFile(store, []);
    process.stdout.write(`nbdsnap: created demo image ${image} and store ${store} (64 MiB each, sparse)\n`);
  }
  await serve({
    images: [`demo=${image}`],
    store: [store],
    control,
    port: opts.port,
    bind: '127.0.0.1',
    readOnly: false,
    logLevel: opts.logLevel,
    description: 'nbdsnap demo device',
    afterStart: async (manager) => {
      if (manager.list().length === 0) {
        // `initial`, or `initial-2`, ... when an earlier `initial` was deleted and its change-tracking
        // point is still kept (a new snapshot may not take that name).
        for (let n = 1; ; n++) {
          try {
            await manager.createSnapshot(['demo'], n === 1 ? 'initial' : `initial-${n}`, false);
            break;
          } catch (err) {
            if ((err as { code?: string }).code !== 'EXISTS' || n >= 100) throw err;
          }
        }
      }
      return [
        `nbdsnap: control socket ${control}; try: NBDSNAP_CONTROL=${control} npx nbdsnap snapshot list`,
        `nbdsnap: try: qemu-io -f raw -c 'write -P 0x55 0 1M' nbd://127.0.0.1:${opts.port}/demo   (the snapshot keeps the old data)`,
        'nbdsnap: press Ctrl-C to stop',
      ];
    },
  });
}
