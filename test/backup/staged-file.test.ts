/**
 * StagedFile (staged-file.ts): the bytes and the SHA-256 of a file written through aligned
 * staging chunks, with O_DIRECT and without, for appends of any size and alignment; fail-stop
 * when a write fails; and the fallback to the page cache on a file system that refuses O_DIRECT
 * (faults injected: tmpfs and ext4 take it), at open or only at the first writes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { files, MAX_IN_FLIGHT, StagedFile } from '../../src/backup/staged-file.ts';
import { type NativeFs, native } from '../../src/block/native.ts';
import { tempDir } from '../helpers/server.ts';
import { MiB, prng } from './rig.ts';

const dir = tempDir('nbdsnap-backup-staged-');
afterAll(() => dir.cleanup());
afterEach(() => {
  vi.restoreAllMocks();
});

const einval = () => Object.assign(new Error('EINVAL: invalid argument'), { code: 'EINVAL' });

/** Append random parts of `sizes` bytes (settling after each); returns the bytes and their SHA-256. */
async function fill(f: StagedFile, sizes: number[]): Promise<{ bytes: Buffer; sha: string }> {
  const parts: Buffer[] = [];
  for (const n of sizes) {
    const b = randomBytes(n);
    f.append(b);
    parts.push(b);
    await f.settle();
  }
  const bytes = Buffer.concat(parts);
  return { bytes, sha: createHash('sha256').update(bytes).digest('hex') };
}

/** What the backup writer checks: every byte in the file, its length, and the digest. */
async function finishAndCheck(f: StagedFile, path: string, want: { bytes: Buffer; sha: string }): Promise<void> {
  const digest = await f.digest();
  await f.sync();
  await f.close();
  expect(digest.toString('hex')).toBe(want.sha);
  expect(statSync(path).size).toBe(want.bytes.length);
  expect(readFileSync(path).equals(want.bytes)).toBe(true);
}

/** Sizes that fill several 4 MiB chunks and end in a partial, unaligned one. */
const SIZES = [1, 3 * MiB + 5, 4 * MiB, 7, 9 * MiB + 4097, 123_457];

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

  it('falls back to the page cache when O_DIRECT is refused at open (file made or not)', async () => {
    const real = files.open;
    for (const madeFirst of [false, true]) {
      const path = join(dir.path, `open-einval-${madeFirst}`);
      // As Linux does on a file system without O_DIRECT: EINVAL, after creating the file or not.
      vi.spyOn(files, 'open').mockImplementationOnce(async (p, flags) => {
        expect(Number(flags) & constants.O_DIRECT).toBe(constants.O_DIRECT);
        if (madeFirst) await (await real(p, Number(flags) & ~constants.O_DIRECT, 0o600)).close();
        throw einval();
      });
      const f = await StagedFile.create(path);
      if (f === undefined) throw new Error('the native helper is not built');
      expect(f.direct).toBe(false);
      await finishAndCheck(f, path, await fill(f, SIZES));
    }
  });

  it('rewrites through the page cache what O_DIRECT writes refused (taken at open, EINVAL on writes)', async () => {
    const n = native as NativeFs & { writeBatch: NonNullable<NativeFs['writeBatch']> };
    const real = n.writeBatch.bind(n);
    const refused = new Set<number>();
    let directFd: number | undefined;
    // The first descriptor written to is the O_DIRECT one: every write there is refused, as on a
    // file system that accepts the flag at open but not the I/O.
    vi.spyOn(n, 'writeBatch').mockImplementation((fd, buffers, offsets, done) => {
      directFd ??= fd;
      if (fd === directFd) {
        for (const o of offsets) refused.add(o);
        setImmediate(() => done(buffers.map(() => einval())));
        return;
      }
      real(fd, buffers, offsets, done);
    });
    const path = join(dir.path, 'write-einval');
    const f = await StagedFile.create(path);
    if (f === undefined) throw new Error('the native helper is not built');
    expect(f.direct).toBe(true);
    await finishAndCheck(f, path, await fill(f, SIZES));
    expect(f.direct).toBe(false);
    expect(refused.size).toBeGreaterThan(1); // several chunks were in flight when the first was refused
  });

  it('rewrites a chunk whose O_DIRECT write was refused after others went through', async () => {
    const n = native as NativeFs & { writeBatch: NonNullable<NativeFs['writeBatch']> };
    const real = n.writeBatch.bind(n);
    let calls = 0;
    vi.spyOn(n, 'writeBatch').mockImplementation((fd, buffers, offsets, done) => {
      calls += 1;
      // The third chunk write: part of it written, then EINVAL (a refused write in the middle).
      if (calls === 3) {
        const half = buffers.map((b) => b.subarray(0, b.length / 2));
        real(fd, half, offsets, () => setImmediate(() => done(buffers.map(() => einval()))));
        return;
      }
      real(fd, buffers, offsets, done);
    });
    const path = join(dir.path, 'write-einval-late');
    const f = await StagedFile.create(path);
    if (f === undefined) throw new Error('the native helper is not built');
    await finishAndCheck(f, path, await fill(f, SIZES));
  });

  it('still fails on a buffered file whose writes fail with EINVAL (no fallback below the page cache)', async () => {
    const n = native as NativeFs & { writeBatch: NonNullable<NativeFs['writeBatch']> };
    vi.spyOn(n, 'writeBatch').mockImplementation((_fd, buffers, _offsets, done) => {
      setImmediate(() => done(buffers.map(() => einval())));
    });
    const path = join(dir.path, 'buffered-einval');
    const f = await StagedFile.create(path, { direct: false });
    if (f === undefined) throw new Error('the native helper is not built');
    await expect(fill(f, SIZES).then(() => f.sync())).rejects.toThrow(/cannot write .*EINVAL/);
  });
});
