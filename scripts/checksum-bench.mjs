// Checksum throughput on 4 KiB, 64 KiB and 1 MiB buffers: Node's zlib.crc32 against CRC32C
// (@node-rs/crc32) and xxHash (hash-wasm). The two packages are not dependencies of nbdsnap:
// install them by hand in a scratch folder (npm install @node-rs/crc32@^1.10 hash-wasm@^4.13)
// and run this script from there. Figures and the choice: src/store/README.md.
import { randomBytes } from 'node:crypto';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { crc32, crc32c } from '@node-rs/crc32';
import { createXXHash3, createXXHash64 } from 'hash-wasm';

const h3 = await createXXHash3();
const h64 = await createXXHash64();
const algos = {
  'zlib.crc32': (b) => zlibCrc32(b),
  '@node-rs crc32c': (b) => crc32c(b),
  '@node-rs crc32': (b) => crc32(b),
  'hash-wasm xxh3': (b) => {
    h3.init();
    h3.update(b);
    return h3.digest('binary');
  },
  'hash-wasm xxh64': (b) => {
    h64.init();
    h64.update(b);
    return h64.digest('binary');
  },
};
for (const size of [4096, 65536, 1048576]) {
  const bufs = Array.from({ length: 16 }, () => randomBytes(size));
  for (const [name, fn] of Object.entries(algos)) {
    for (let i = 0; i < 50; i++) fn(bufs[i % 16]);
    const n = Math.max(1, Math.floor((512 * 1024 * 1024) / size));
    const passes = [];
    for (let r = 0; r < 3; r++) {
      const t = process.hrtime.bigint();
      for (let i = 0; i < n; i++) fn(bufs[i & 15]);
      passes.push(Number(process.hrtime.bigint() - t) / 1e9);
    }
    const s = Math.min(...passes);
    const gbs = ((n * size) / s / 1e9).toFixed(2);
    console.log(`${String(size).padStart(8)}  ${name.padEnd(18)} ${gbs} GB/s  ${((s / n) * 1e6).toFixed(2)} us/call`);
  }
}
