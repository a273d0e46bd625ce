import { defineConfig } from 'vitest/config';

// One run for the whole suite. Interop and kernel tests start real servers and real clients, so
// files run two at a time (this is a 2-core machine) and get generous per-test timeouts.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Fails the run when a tool the tests drive is missing (NBDSNAP_TEST_ALLOW_MISSING=1 opts out).
    globalSetup: ['test/helpers/requirements.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 300_000,
  },
});
