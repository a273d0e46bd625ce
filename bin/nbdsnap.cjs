#!/usr/bin/env node
// nbdsnap launcher. CommonJS on purpose: it runs synchronously, so the thread-pool size below is in
// place before anything touches libuv's pool (file I/O at queue depth 32 wants more than 4 threads).
'use strict';
process.env.UV_THREADPOOL_SIZE ??= '16';
(async () => {
  const { register } = await import('tsx/esm/api');
  register();
  const { main } = await import('../src/cli/main.ts');
  await main(process.argv.slice(2));
})().catch((err) => {
  process.stderr.write(`nbdsnap: ${err?.stack ?? err}\n`);
  process.exit(1);
});
