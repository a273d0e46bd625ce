/**
 * The seeded generator of the tests and scripts (mulberry32): small, fast, and the same numbers
 * for the same seed on every run, so a failure names a seed that replays it. Not for anything
 * that must be unpredictable.
 */

/** Numbers in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Whole numbers in [0, n), from the same sequence as rng(seed). */
export function rngInt(seed: number): (n: number) => number {
  const next = rng(seed);
  return (n) => Math.floor(next() * n);
}
