/**
 * The merge's token bucket (src/snapshot/rate-limit.ts) on an injected clock: no limit never
 * waits; a run spends its bytes and the next waits until the debt is paid; the average over many
 * runs is the limit whatever the run size; idle time saves up at most a tenth of a second; a
 * change of speed takes effect at once (a debt is forgiven); bad speeds are refused.
 */
import { describe, expect, it } from 'vitest';
import { TokenBucket } from '../../../src/snapshot/rate-limit.ts';

const MiB = 2 ** 20;

function clock() {
  const c = { t: 1000, now: () => c.t };
  return c;
}

describe('TokenBucket', () => {
  it('0 is no limit', () => {
    const c = clock();
    const b = new TokenBucket(0, c.now);
    for (let i = 0; i < 100; i++) {
      expect(b.delay()).toBe(0);
      b.take(64 * MiB);
    }
  });

  it('a run waits for the debt of the last one', () => {
    const c = clock();
    const b = new TokenBucket(32 * MiB, c.now);
    expect(b.delay()).toBe(0);
    b.take(MiB); // 1/32 s at 32 MiB/s
    expect(b.delay()).toBe(Math.ceil(1000 / 32));
    c.t += 10;
    expect(b.delay()).toBe(Math.ceil(1000 / 32 - 10));
    c.t += 1000 / 32 - 10;
    expect(b.delay()).toBe(0);
  });

  it('averages the limit over many runs of any size', () => {
    for (const run of [4096, 64 * 1024, MiB, 16 * MiB]) {
      const c = clock();
      const speed = 8 * MiB;
      const b = new TokenBucket(speed, c.now);
      const start = c.t;
      let bytes = 0;
      while (bytes < 256 * MiB) {
        c.t += b.delay();
        expect(b.delay()).toBe(0);
        b.take(run);
        bytes += run;
        c.t += 0.01; // the run itself takes some time
      }
      const seconds = (c.t - start) / 1000;
      // The last run is not waited for: at most one run over the limit.
      expect(bytes / seconds).toBeLessThanOrEqual(speed * 1.0001 + run / seconds);
      expect(bytes / seconds).toBeGreaterThan(speed * 0.95);
    }
  });

  it('saves up at most a tenth of a second while idle', () => {
    const c = clock();
    const b = new TokenBucket(10 * MiB, c.now);
    c.t += 60_000;
    b.take(MiB); // the tenth of a second saved (1 MiB) pays for it
    expect(b.delay()).toBe(0);
    b.take(MiB);
    expect(b.delay()).toBe(100);
  });

  it('a change of speed applies at once', () => {
    const c = clock();
    const b = new TokenBucket(MiB, c.now);
    b.take(16 * MiB);
    expect(b.delay()).toBe(16_000);
    b.speed = 0;
    expect(b.delay()).toBe(0);
    b.take(16 * MiB);
    b.speed = 4 * MiB; // the debt is forgiven
    expect(b.speed).toBe(4 * MiB);
    expect(b.delay()).toBe(0);
    b.take(MiB);
    expect(b.delay()).toBe(250);
    b.speed = 2 * MiB; // a new debt too
    expect(b.delay()).toBe(0);
  });

  it('the clock going back does not earn', () => {
    const c = clock();
    const b = new TokenBucket(MiB, c.now);
    b.take(MiB);
    c.t -= 5000;
    expect(b.delay()).toBe(1000);
  });

  it('refuses speeds that are not whole bytes per second', () => {
    const c = clock();
    for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) {
      expect(() => new TokenBucket(bad, c.now)).toThrow(/not a whole number/);
      const b = new TokenBucket(1, c.now);
      expect(() => {
        b.speed = bad;
      }).toThrow(/not a whole number/);
      expect(b.speed).toBe(1);
    }
  });
});
