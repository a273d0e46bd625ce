import { defineConfig } from 'vitest/config';

// One run for the whole suite. Interop and kernel tests start real servers and real clients, so
// files run two at a time (this is a 2-core machine) and get generous per-test timeouts.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 300_000,
  },
});
