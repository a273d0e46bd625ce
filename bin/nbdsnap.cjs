#!/usr/bin/env node
// nbdsnap launcher. CommonJS on purpose: it runs synchronously, so the thread-pool size below is in
// place before anything touches libuv's pool (file I/O at queue depth 32 wants more than 4 threads).
// Runs dist/nbdsnap.mjs (built by `npm install` / `npm run build`) when it is newer than every file
// in src/, else the TypeScript sources through tsx.
'use strict';
process.env.UV_THREADPOOL_SIZE ??= '16';
// V8 grows the young generation up to two 16 MiB semi-spaces under a server's allocation rate, and
// keeps them: 15 to 30 MiB of a server's peak RSS, for no CPU per request that we could measure
// (1 GiB of first writes, 100,000 random reads). Keep it at its initial size, unless the user sized
// it (--max-semi-space-size in the node flags or NODE_OPTIONS). V8 reads this flag whenever it
// would grow the young generation, so setting it here, after start, takes effect.
if (!/semi-space/.test(`${process.execArgv.join(' ')} ${process.env.NODE_OPTIONS ?? ''}`)) {
  require('node:v8').setFlagsFromString('--semi-space-growth-factor=1');
}
const { statSync, readdirSync } = require('node:fs');
const { join } = require('node:path');

const root = join(__dirname, '..');
const bundle = join(root, 'dist', 'nbdsnap.mjs');

function newestSource(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(path));
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

function bundleIsFresh() {
  try {
    return statSync(bundle).mtimeMs >= newestSource(join(root, 'src'));
  } catch {
    return false;
  }
}

(async () => {
  let entry;
  if (process.env.NBDSNAP_TSX !== '1' && bundleIsFresh()) {
    entry = await import(bundle);
  } else {
    const { register } = await import('tsx/esm/api');
    register();
    entry = await import('../src/cli/main.ts');
  }
  await entry.main(process.argv.slice(2));
})().catch((err) => {
  process.stderr.write(`nbdsnap: ${err?.stack ?? err}\n`);
  process.exit(1);
});
