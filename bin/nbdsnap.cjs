#!/usr/bin/env node
// nbdsnap launcher. CommonJS on purpose: it runs synchronously, so the thread-pool size below is in
// place before anything touches libuv's pool (file I/O at queue depth 32 wants more than 4 threads).
// Runs dist/nbdsnap.mjs (built by `npm install` / `npm run build`) when it is newer than every file
// in src/, else the TypeScript sources through tsx.
'use strict';
process.env.UV_THREADPOOL_SIZE ??= '16';
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
