/**
 * Global setup of the suite (vitest.config.ts): a tool the tests drive that is missing fails the
 * run with the apt-get line that installs it, instead of letting its tests skip quietly; so does
 * a missing native helper. NBDSNAP_TEST_ALLOW_MISSING=1 opts out: the tests that need a missing
 * tool then skip, as they say.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ALLOW_MISSING, missingMessage, missingPackages } from '../../scripts/requirements.mjs';

export default function checkRequirements(): void {
  if (process.env[ALLOW_MISSING] === '1') return;
  const problems: string[] = [];
  const missing = missingPackages();
  if (missing.length > 0) problems.push(...missingMessage(missing));
  if (!existsSync(join(import.meta.dirname, '../../build/Release/fsx.node'))) {
    problems.push(
      'the native helper is not built (build/Release/fsx.node): install python3, make and g++, then npm ci',
      `or set ${ALLOW_MISSING}=1 to run without it`,
    );
  }
  if (problems.length > 0) throw new Error(`nbdsnap tests cannot run as asked:\n  ${problems.join('\n  ')}`);
}
