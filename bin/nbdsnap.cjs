#!/usr/bin/env node
// nbdsnap launcher. CommonJS on purpose: it runs synchronously, so the thread-pool size below is in
// place before anything touches libuv's pool (file I/O at queue depth 32 wants more than 4 threads).
// Runs the bundle dist/nbdsnap.mjs (built by `npm ci`, `npm run build` and `npm pack`), unless this
// is a checkout whose src/ holds TypeScript newer than the bundle: then the sources run through tsx
// (a development dependency), so editing src/ never runs stale code. An installed package has no
// TypeScript in src/ and always runs the bundle, with no TypeScript toolchain.
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

/** The newest mtime of a .ts file under `dir` (0 if none, or no such folder). */
function newestSource(dir) {
  let newest = 0;
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const entry of entries) {
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
    let register;
    try {
      ({ register } = await import('tsx/esm/api'));
    } catch {
      process.stderr.write(`nbdsnap: error: ${bundle} is missing and tsx is not installed: run npm ci (a checkout) or reinstall the package\n`);
      process.exit(1);
    }
    register();
    entry = await import('../src/cli/main.ts');
  }
  await entry.main(process.argv.slice(2));
})().catch((err) => {
  // main() reports every failure of a command itself; this is the launcher failing to load it.
  const where = process.env.NBDSNAP_DEBUG === '1' ? `\n${err?.stack}` : ' (NBDSNAP_DEBUG=1 shows where)';
  process.stderr.write(`nbdsnap: error: cannot start: ${err?.message ?? err}${where}\n`);
  process.exit(1);
});
