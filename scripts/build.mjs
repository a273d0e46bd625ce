// Bundle the CLI into dist/ (scripts/bundle.mjs: dist/nbdsnap.mjs and the chunks each command
// loads when it runs) and render the man page dist/nbdsnap.1 from the bundle's own parser (run by
// `npm ci` (prepare), `npm run build`, `npm test` and `npm pack` (prepack)). The launcher prefers
// the bundle when it is newer than every source file; in a checkout whose sources are newer it
// rebuilds the bundle first (and runs the TypeScript through tsx if it cannot), so editing src/
// never runs stale code. Running the bundle instead of tsx saves about 40 MiB of memory, tsx's
// loader thread and a second of start-up, and an installed package needs neither tsx nor esbuild
// (both are development dependencies).

import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { bundle, dist, replace } from './bundle.mjs';

// A package ships only the chunks of this build.
const entry = await bundle({ prune: process.env.npm_lifecycle_event === 'prepack' ? 'all' : 'old' });
const { manPage } = await import(`${pathToFileURL(entry).href}?${Date.now()}`);
replace(join(dist, 'nbdsnap.1'), await manPage());
