// Checksum throughput on 4 KiB, 64 KiB and 1 MiB buffers, in CPU time of this process (the
// machine is shared, wall-clock is noisy): Node's zlib.crc32 against the native helper's CRC-32
// (src/native/crc32.c) at each level this CPU has (0 tables, 1 PCLMULQDQ, 2 VPCLMULQDQ), and the
// 4 KiB block checksums of a 64 KiB chunk (crc32Blocks). Optionally CRC32C (@node-rs/crc32) and
// xxHash (hash-wasm), which are not dependencies of nbdsnap: when installed (npm install
// @node-rs/crc32@^1.10 hash-wasm@^4.13 in a scratch folder, NODE_PATH pointing there) they are
// measured too. Figures and the choice: src/store/README.md. Run: node scripts/checksum-bench.mjs
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { crc32 as zlibCrc32 } from 'node:zlib';

const require = createRequire(import.meta.url);
const native = require('../build/Release/fsx.node');

const algos = { 'zlib.crc32': (b) => zlibCrc32(b) };
if (native.crc32Use) {
  const best = native.crc32Use(9);
  for (let level = 0; level <= best; level++)
    algos[`native crc32 L${level}`] = (b) => {
      native.crc32Use(level);
      return native.crc32(b);
    };
  const out = new Uint32Array(256);
  algos['native crc32Blocks 4K'] = (b) => {
    native.crc32Use(best);
    return native.crc32Blocks(b, 4096, out);
  };
}
try {
  const { crc32c } = await import('@node-rs/crc32');
  algos['@node-rs crc32c'] = (b) => crc32c(b);
} catch {}
try {
  const { createXXHash3 } = await import('hash-wasm');
  const h3 = await createXXHash3();
  algos['hash-wasm xxh3'] = (b) => {
    h3.init();
    h3.update(b);
    return h3.digest('binary');
  };
} catch {}

const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
for (const size of [4096, 65536, 1048576]) {
  const bufs = Array.from({ length: 16 }, () => randomBytes(size));
  for (const [name, fn] of Object.entries(algos)) {
    for (let i = 0; i < 50; i++) fn(bufs[i % 16]);
    const n = Math.max(1, Math.floor((256 * 1024 * 1024) / size));
    const passes = [];
    for (let r = 0; r < 3; r++) {
      const t = cpu();
      for (let i = 0; i < n; i++) fn(bufs[i & 15]);
      passes.push(cpu() - t);
    }
    const s = Math.min(...passes);
    const gbs = ((n * size) / s / 1e9).toFixed(2);
    console.log(`${String(size).padStart(8)}  ${name.padEnd(22)} ${gbs.padStart(6)} GB/s  ${((s / n) * 1e6).toFixed(2)} us/call`);
  }
}
if (native.crc32Use) native.crc32Use(9);
