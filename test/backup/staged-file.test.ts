/**
 * StagedFile (staged-file.ts): the bytes and the SHA-256 of a file written through aligned
 * staging chunks, with O_DIRECT and without, for appends of any size and alignment; and
 * fail-stop when a write fails.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../../src/block/native.ts';
import { MAX_IN_FLIGHT, StagedFile } from '../../src/backup/staged-file.ts';
import { tempDir } from '../helpers/server.ts';
import { MiB, prng } from './rig.ts';

const dir = tempDir('nbdsnap-backup-staged-');
afterAll(() => dir.cleanup());

const hasHelper = (native as { alignedBuffer?: unknown } | undefined)?.alignedBuffer !== undefined;

describe.skipIf(!hasHelper && process.env.CI !== 'true')('staged file', () => {
  it.each([true, false])('writes every byte in order and hashes them (O_DIRECT %s)', async (direct) => {
    const path = join(dir.path, `f-${direct}`);
    const f = await StagedFile.create(path, { direct });
    if (f === undefined) throw new Error('the native helper is not built');
    const rnd = prng(7);
    const ref = createHash('sha256');
    const parts: Buffer[] = [];
    const sizes = [0, 1, 24, 4 * MiB - 25, 4, 4 * MiB, MiB + 28, 3, 8 * MiB + 1, 4095, 4097];
    for (let i = 0; i < 30; i++) sizes.push(Math.floor(rnd() * 1_500_000));
    for (const [i, n] of sizes.entries()) {
      const b = randomBytes(n);
      f.append(b);
      ref.update(b);
      parts.push(Buffer.from(b));
      b.fill(0x55); // copied in: the caller's buffer is free at once
      await f.settle();
      if (i % 9 === 4) expect((await f.digest()).toString('hex')).toBe(ref.copy().digest('hex'));
    }
    const digest = await f.digest();
    expect(digest.toString('hex')).toBe(ref.digest('hex'));
    const tail = Buffer.from('END.'); // appended after the digest: written, not hashed
    f.append(tail);
    parts.push(tail);
    await f.sync();
    await f.close();
    const want = Buffer.concat(parts);
    expect(statSync(path).size).toBe(want.length);
    expect(readFileSync(path).equals(want)).toBe(true);
  });

  it('holds at most MAX_IN_FLIGHT + 2 staging chunks, however much is written', async () => {
    const f = await StagedFile.create(join(dir.path, 'bounded'));
    if (f === undefined) throw new Error('the native helper is not built');
    const piece = randomBytes(MiB + 28);
    for (let i = 0; i < 200; i++) {
      f.append(piece);
      await f.settle();
    }
    await f.sync();
    await f.close();
    expect(f.chunks).toBeGreaterThan(1);
    expect(f.chunks).toBeLessThanOrEqual(MAX_IN_FLIGHT + 2);
  });

  it('fails every later call once a write failed, and never reports the file durable', async () => {
    const path = join(dir.path, 'fail');
    const f = await StagedFile.create(path);
    if (f === undefined) throw new Error('the native helper is not built');
    f.append(randomBytes(MiB));
    // the descriptor goes away under the writer: its next chunk write fails (EBADF)
    await (f as unknown as { fh: { close(): Promise<void> } }).fh.close();
    let failed: unknown;
    try {
      for (let i = 0; i < 40; i++) {
        f.append(randomBytes(MiB));
        await f.settle();
      }
      await f.sync();
    } catch (err) {
      failed = err;
    }
    expect(String(failed)).toMatch(/cannot write .*fail/);
    expect(() => f.append(Buffer.alloc(1))).toThrow(/cannot write/);
    await expect(f.sync()).rejects.toThrow(/cannot write/);
  });
});
