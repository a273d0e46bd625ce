// Bundle the CLI into dist/nbdsnap.mjs and render the man page dist/nbdsnap.1 from the bundle's
// own parser (run by `npm ci` (prepare), `npm run build` and `npm pack` (prepack)). The launcher
// prefers the bundle when it is newer than every source file, and falls back to running the
// TypeScript through tsx otherwise, so editing src/ never runs stale code. Running the bundle
// instead of tsx saves about 40 MiB of memory and tsx's loader thread, and an installed package
// needs neither tsx nor esbuild (both are development dependencies).

import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const bundle = join(root, 'dist/nbdsnap.mjs');
// Written to a new file and renamed over the old one, so a server starting meanwhile (the tests
// rebuild while others run) reads either bundle whole, never half of one.
const result = await build({
  entryPoints: [join(root, 'src/cli/main.ts')],
  outfile: bundle,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  packages: 'external',
  sourcemap: 'linked',
  logLevel: 'warning',
  write: false,
});
mkdirSync(join(root, 'dist'), { recursive: true });
for (const file of result.outputFiles) replace(file.path, file.contents);
const { manPage } = await import(`${pathToFileURL(bundle).href}?${Date.now()}`);
replace(join(root, 'dist/nbdsnap.1'), await manPage());

function replace(path, contents) {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, contents);
  renameSync(tmp, path);
}
