#!/usr/bin/env node
// nbdsnap launcher. CommonJS on purpose: it runs synchronously, so the thread-pool size below is in
// place before anything touches libuv's pool (file I/O at queue depth 32 wants more than 4 threads).
// Runs the bundle dist/nbdsnap.mjs (built by `npm ci`, `npm run build` and `npm pack`). In a checkout
// whose src/ holds TypeScript newer than the bundle, it first rebuilds the bundle
// (scripts/bundle.mjs, half a second, once per change), so editing src/ never runs stale code and
// every later command starts as fast as from a package; if it cannot (a source that does not
// compile, another process rebuilding at that moment, no esbuild), the sources run through tsx (a
// development dependency, a second of start-up per command). NBDSNAP_TSX=1 always runs them
// through tsx. An installed package has no TypeScript in src/ and always runs the bundle, with no
// TypeScript toolchain.
'use strict';
process.env.UV_THREADPOOL_SIZE ??= '16';
// V8 grows the young generation up to two 16 MiB semi-spaces under a server's allocation rate, and
// keeps them: 15 to 30 MiB of a server's peak RSS, for no CPU per request that we could measure
// (1 GiB of first writes, 100,000 random reads). Keep it at its initial size, unless the user sized
// it (--max-semi-space-size in the node flags or NODE_OPTIONS). V8 reads this flag whenever it
// would grow the young generation, so setting it here, after start, takes effect. Servers only
// (serve, demo: the first word that is not an option names the command): while a command loads
// its code, a young generation that cannot grow costs 20 ms of scavenges, a tenth of the start-up
// of a short command such as `snapshot list`.
const command = process.argv.slice(2).find((a) => !a.startsWith('-'));
const server = command === 'serve' || command === 'demo';
if (server && !/semi-space/.test(`${process.execArgv.join(' ')} ${process.env.NODE_OPTIONS ?? ''}`)) {
  require('node:v8').setFlagsFromString('--semi-space-growth-factor=1');
}
const { closeSync, existsSync, mkdirSync, openSync, readdirSync, statSync, unlinkSync } = require('node:fs');
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

/**
 * Rebuild the stale bundle of a checkout in a child process (esbuild's service stays out of this
 * one, which may be a long-running server). One process at a time: the others meanwhile run the
 * sources through tsx (a lock left by a process that died is taken over after a minute). True
 * when the bundle was rebuilt.
 */
function rebuild() {
  const script = join(root, 'scripts', 'bundle.mjs');
  if (!existsSync(script)) return false;
  const lock = join(root, 'dist', '.rebuild.lock');
  let fd;
  try {
    mkdirSync(join(root, 'dist'), { recursive: true });
    fd = openSync(lock, 'wx');
  } catch (err) {
    if (err?.code !== 'EEXIST') return false;
    try {
      if (Date.now() - statSync(lock).mtimeMs < 60_000) return false;
      unlinkSync(lock);
      fd = openSync(lock, 'wx');
    } catch {
      return false;
    }
  }
  try {
    const built = require('node:child_process').spawnSync(process.execPath, [script], { cwd: root, stdio: 'ignore' });
    return built.status === 0 && bundleIsFresh();
  } finally {
    closeSync(fd);
    try {
      unlinkSync(lock);
    } catch {
      // taken over by another process meanwhile
    }
  }
}

(async () => {
  let entry;
  if (process.env.NBDSNAP_TSX !== '1' && (bundleIsFresh() || rebuild())) {
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
