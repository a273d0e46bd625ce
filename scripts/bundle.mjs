// Bundle the CLI into dist/: the entry dist/nbdsnap.mjs (the command line: yargs and the table of
// commands) and, in dist/chunks/, one chunk per command module and per piece of code several
// commands share, each loaded only when a command that needs it runs (src/cli/program.ts). Used
// by scripts/build.mjs, and by bin/nbdsnap.cjs to rebuild a stale bundle in a checkout.
//
// yargs (which every command loads) is bundled into the entry with its dependencies: one file to
// compile instead of some 30 ES modules to resolve and load, 50 ms of every start-up. Two things
// follow: its package string-width is replaced by src/cli/string-width.ts (string-width builds
// an Intl.Segmenter and an emoji expression as it loads, 40 ms more, for ASCII help text), and
// its locale files, which it finds beside its own file (`../../../locales`), are copied to
// dist/locales and found there. Every other package stays in node_modules (pino, prom-client,
// the AWS SDK are loaded only by the commands that use them).
//
// Replacing a running bundle: chunk names carry a hash of their content, so a build writes new
// chunks beside the old ones, then renames the new entry over the old one (each file written to a
// temporary name first). A process that started on the old entry goes on loading the old chunks,
// which are removed only once no build has written them for an hour (or at once with `prune:
// 'all'`, for a package), so a server started a moment before a rebuild (the tests rebuild while
// other tests run) still finds the chunks it loads later.

import {
  copyFileSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const dist = join(root, 'dist');
const chunks = join(dist, 'chunks');
const KEEP_OLD_MS = 3600_000;
/** Packages our sources import that go into the bundle (with what they import); others stay external. */
const BUNDLED = new Set(['yargs', 'get-east-asian-width', 'strip-ansi']);
const YARGS_SHIM = /[\\/]yargs[\\/]lib[\\/]platform-shims[\\/]esm\.mjs$/;
const LOCALES_FROM = "resolve(__dirname, '../../../locales')";
const LOCALES_TO = "resolve(__dirname, '../locales')"; // the shim is in dist/nbdsnap.mjs: dist/locales

const packageName = (spec) =>
  spec
    .split('/')
    .slice(0, spec.startsWith('@') ? 2 : 1)
    .join('/');

/** The esbuild plugin for the above: what is external, string-width, yargs' locale folder (`shim`). */
const cliPackages = (shim) => ({
  name: 'nbdsnap-cli-packages',
  setup(b) {
    b.onResolve({ filter: /^string-width$/ }, () => ({ path: join(root, 'src/cli/string-width.ts') }));
    b.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.path.startsWith('node:') || args.importer.includes(`${join('node_modules', '')}`)) return undefined;
      return BUNDLED.has(packageName(args.path)) ? undefined : { path: args.path, external: true };
    });
    b.onLoad({ filter: YARGS_SHIM }, (args) => {
      const text = readFileSync(args.path, 'utf8');
      if (!text.includes(LOCALES_FROM))
        throw new Error(`${args.path}: yargs finds its locales in a new way; see scripts/bundle.mjs`);
      shim.path = args.path;
      return { contents: text.replace(LOCALES_FROM, LOCALES_TO), loader: 'js' };
    });
  },
});

/** Build dist/nbdsnap.mjs and its chunks. `prune: 'all'` removes every chunk this build did not write. */
export async function bundle({ prune = 'old' } = {}) {
  const shim = { path: '' };
  const result = await build({
    absWorkingDir: root,
    entryPoints: { nbdsnap: join(root, 'src/cli/main.ts') },
    outdir: dist,
    entryNames: '[name]',
    chunkNames: 'chunks/[name]-[hash]',
    outExtension: { '.js': '.mjs' },
    bundle: true,
    splitting: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    plugins: [cliPackages(shim)],
    sourcemap: 'linked',
    logLevel: 'warning',
    metafile: true,
    write: false,
  });
  const entry = join(dist, 'nbdsnap.mjs');
  if (!Object.keys(result.metafile.outputs['dist/nbdsnap.mjs']?.inputs ?? {}).some((i) => YARGS_SHIM.test(i)))
    throw new Error("yargs' platform shim is not in dist/nbdsnap.mjs: it would not find dist/locales");
  mkdirSync(join(dist, 'locales'), { recursive: true });
  const locales = join(dirname(shim.path), '../../locales');
  for (const name of readdirSync(locales)) copyFileSync(join(locales, name), join(dist, 'locales', name));
  mkdirSync(chunks, { recursive: true });
  const files = result.outputFiles;
  // Chunks (and their maps) first, the entry last: the entry is what the launcher looks at.
  const order = [...files].sort((a, b) => Number(a.path.startsWith(entry)) - Number(b.path.startsWith(entry)));
  for (const file of order) replace(file.path, file.contents);
  const written = new Set(files.map((f) => relative(chunks, f.path)));
  const now = Date.now();
  for (const name of readdirSync(chunks)) {
    if (written.has(name)) continue;
    const path = join(chunks, name);
    try {
      if (prune === 'all' || now - statSync(path).mtimeMs > KEEP_OLD_MS) rmSync(path, { force: true });
    } catch {
      // another build removed it first
    }
  }
  return entry;
}

/** Write `path` whole under a temporary name, then rename it over the old file. */
export function replace(path, contents) {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, contents);
  renameSync(tmp, path);
}

// `node scripts/bundle.mjs`: the bundle alone, without the man page (bin/nbdsnap.cjs runs this).
if (process.argv[1] !== undefined && join(process.argv[1]) === fileURLToPath(import.meta.url)) await bundle();
