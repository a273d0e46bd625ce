// Runs Biome's linux-x64 binary directly. The registry this project installs from lacks Biome's
// other platform packages, which the `@biomejs/biome` wrapper lists as optional dependencies; npm
// then leaves them out of package-lock.json and `npm ci` refuses the lock. Depending on the one
// platform package (the only platform this project's machines have) keeps `npm ci` working.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
let binary;
try {
  binary = join(dirname(require.resolve('@biomejs/cli-linux-x64/package.json')), 'biome');
} catch {
  process.stderr.write('biome: @biomejs/cli-linux-x64 is not installed (npm ci installs it on linux x64)\n');
  process.exit(2);
}
const r = spawnSync(binary, process.argv.slice(2), { stdio: 'inherit' });
process.exit(r.status ?? 1);
