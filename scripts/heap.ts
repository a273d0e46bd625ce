/**
 * What the in-process scale scripts (cbt-scale, cbt-keep-scale, extable-scale) measure memory
 * with: the live heap after garbage collection, V8's heap plus typed-array backing stores (which
 * live outside it). Importing this needs `node --expose-gc`.
 */
const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error('run with node --expose-gc --import tsx');

/** Bytes in use after three full collections: heapUsed + arrayBuffers. */
export function liveBytes(): number {
  for (let i = 0; i < 3; i++) (gc as () => void)();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}
