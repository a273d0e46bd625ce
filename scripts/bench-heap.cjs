// bench-heap.cjs: preloaded into an nbdsnap server by scripts/bench.sh
//   node --expose-gc --require scripts/bench-heap.cjs bin/nbdsnap.cjs serve ...
// On SIGUSR2: two full garbage collections, then process.memoryUsage() as JSON to $BENCH_HEAP_OUT
// (written to a temporary name and renamed, so a reader never sees half a file). The benchmark
// signals before and after filling the store and divides the heapUsed delta by the chunks copied.
'use strict';
const { renameSync, writeFileSync } = require('node:fs');

const out = process.env.BENCH_HEAP_OUT;
if (out && typeof global.gc === 'function') {
  process.on('SIGUSR2', () => {
    global.gc();
    global.gc();
    writeFileSync(`${out}.tmp`, `${JSON.stringify(process.memoryUsage())}\n`);
    renameSync(`${out}.tmp`, out);
  });
}
