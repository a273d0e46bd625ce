/**
 * `nbdsnap demo`: the zero-argument way to see nbdsnap work. Creates a 64 MiB sparse demo image
 * with a few recognisable blocks (once; later runs reuse it), then serves it like `serve`.
 */
import { existsSync, mkdirSync, openSync, closeSync, ftruncateSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LogLevel } from '../log.ts';
import { serve } from './serve.ts';

const DEMO_SIZE = 64 * 1024 * 1024;

export async function demo(opts: { dir?: string | undefined; port: number; logLevel: LogLevel }): Promise<void> {
  const dir = opts.dir ?? join(tmpdir(), 'nbdsnap-demo');
  const image = join(dir, 'demo.img');
  if (!existsSync(image)) {
    mkdirSync(dir, { recursive: true });
    const fd = openSync(image, 'w');
    ftruncateSync(fd, DEMO_SIZE);
    // Three data regions in an otherwise sparse image, so `nbdinfo --map` has something to show.
    for (const [offset, text] of [
      [0, 'nbdsnap demo device: block 0\n'],
      [16 * 1024 * 1024, 'nbdsnap demo device: 16 MiB\n'],
      [48 * 1024 * 1024, 'nbdsnap demo device: 48 MiB\n'],
    ] as const) {
      writeSync(fd, Buffer.alloc(1024 * 1024, text), 0, 1024 * 1024, offset);
    }
    closeSync(fd);
    process.stdout.write(`nbdsnap: created demo image ${image} (64 MiB, sparse)\n`);
  }
  await serve({
    images: [`demo=${image}`],
    port: opts.port,
    bind: '127.0.0.1',
    readOnly: false,
    logLevel: opts.logLevel,
    description: 'nbdsnap demo device',
  });
}
