// `npm run setup`, and the first step of `npm test`: make this machine able to run the suite.
//   - Debian packages whose tools are missing (scripts/requirements.mjs): installed with apt-get
//     when run as root; otherwise the exact `apt-get install` line is printed and setup fails,
//     unless NBDSNAP_TEST_ALLOW_MISSING=1 (then the tests that need them are skipped).
//   - node_modules: `npm ci` when it is missing or older than package-lock.json.
// Plain JavaScript with no dependencies: it runs on a fresh machine before `npm ci`.
// --dry-run prints the commands instead of running them.
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ALLOW_MISSING, aptLine, missingMessage, missingPackages } from './requirements.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dryRun = process.argv.includes('--dry-run');
const say = (line) => process.stderr.write(`nbdsnap setup: ${line}\n`);

function sh(cmd, args, env = {}) {
  say(`${dryRun ? 'would run' : 'running'}: ${[cmd, ...args].join(' ')}`);
  if (dryRun) return;
  const r = spawnSync(cmd, args, {
    cwd: root,
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, ...env },
  });
  if (r.status !== 0) {
    say(`${cmd} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`})`);
    process.exit(1);
  }
}

let missing = missingPackages();
if (missing.length > 0) {
  const root = process.getuid?.() === 0 && process.env.NBDSNAP_SETUP_AS_USER !== '1';
  if (root && existsSync('/usr/bin/apt-get')) {
    const env = { DEBIAN_FRONTEND: 'noninteractive' };
    sh('apt-get', ['update', '-qq'], env);
    sh('apt-get', aptLine(missing).split(' ').slice(1), env);
    missing = dryRun ? [] : missingPackages();
  }
  if (missing.length > 0) {
    for (const line of missingMessage(missing)) say(line);
    if (process.env[ALLOW_MISSING] !== '1') process.exit(1);
    say(`${ALLOW_MISSING}=1: going on without them`);
  }
}

const hidden = join(root, 'node_modules', '.package-lock.json');
const stale = !existsSync(hidden) || statSync(hidden).mtimeMs < statSync(join(root, 'package-lock.json')).mtimeMs;
if (stale) sh('npm', ['ci', '--no-audit', '--no-fund']);
