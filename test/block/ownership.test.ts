/**
 * Ownership without a server: the /proc lock-line parser, device numbers, identities and their
 * overlap (hard links and symlinks are one file; a loop device is its backing file, shifted by
 * its offset), the alias check of one server's origins and store ranges, and claims: the same
 * user claims again, another user of the same bytes in this process is refused, and a lock held
 * by another process is refused naming its pid.
 */
import { spawn } from 'node:child_process';
import { linkSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseLockLine } from '../../src/block/holders.ts';
import { devName, splitDev } from '../../src/block/identity.ts';
import { native } from '../../src/block/native.ts';
import { claimStorage, identify, overlaps, refuseAliases } from '../../src/block/ownership.ts';
import { addPartitions, attachLoop, detachLoop, mbrImage, noLoop, removePartitions } from '../helpers/loop.ts';
import { ROOT, tempDir } from '../helpers/server.ts';

const dir = tempDir('nbdsnap-identity-');
afterAll(() => dir.cleanup());
const MiB = 1024 * 1024;

function file(name: string, size = 4 * MiB): string {
  const path = join(dir.path, name);
  writeFileSync(path, Buffer.alloc(size, 1));
  return path;
}

describe('lock lines from /proc', () => {
  it('parses an open file description lock, a POSIX lock and skips waiters', () => {
    expect(parseLockLine('lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:2146322 0 EOF')).toEqual({
      type: 'OFDLCK',
      write: true,
      pid: -1,
      fileId: '254:0:2146322',
      start: 0,
      end: Number.POSITIVE_INFINITY,
    });
    expect(parseLockLine('2: POSIX  ADVISORY  READ 1234 08:11:99 100 199')).toEqual({
      type: 'POSIX',
      write: false,
      pid: 1234,
      fileId: '8:17:99',
      start: 100,
      end: 200,
    });
    expect(parseLockLine('2: -> POSIX  ADVISORY  WRITE 99 08:11:99 0 EOF')).toBeUndefined();
    expect(parseLockLine('flags:\t02100002')).toBeUndefined();
  });

  it('splits device numbers as glibc encodes them', () => {
    expect(splitDev(65024)).toEqual({ major: 254, minor: 0 });
    expect(devName(0x700)).toBe('7:0');
    // major 259 (NVMe and extended minors), minor 300
    const dev = (300 & 0xff) | ((259 & 0xfff) << 8) | ((300 & ~0xff) << 12);
    expect(devName(dev)).toBe('259:300');
  });
});

describe('identity', () => {
  const a = file('a.img');
  const hard = join(dir.path, 'hard.img');
  linkSync(a, hard);
  const soft = join(dir.path, 'soft.img');
  symlinkSync(a, soft);
  const b = file('b.img');

  it('is the file underneath, whatever its name', () => {
    expect(identify(hard).key).toBe(identify(a).key);
    expect(identify(soft).key).toBe(identify(a).key);
    expect(identify(b).key).not.toBe(identify(a).key);
  });

  it('overlaps only where the byte extents share a byte', () => {
    expect(overlaps(identify(a, 0, 4096), identify(hard, 4095, 10))).toBe(true);
    expect(overlaps(identify(a, 0, 4096), identify(hard, 4096, 10))).toBe(false);
    expect(overlaps(identify(a), identify(b))).toBe(false);
  });

  it('refuses an origin and a store range on one file under two names, and two ranges that overlap', () => {
    const origin = [{ name: 'disk', path: a, readOnly: false }];
    expect(() => refuseAliases(origin, [{ path: hard, start: 0, length: MiB }])).toThrow(
      /store range .*hard\.img:0\+2048 overlaps the origin device disk/,
    );
    const ranges = [
      { path: b, start: 0, length: MiB },
      { path: b, start: MiB, length: MiB },
    ];
    expect(() => refuseAliases(origin, ranges)).not.toThrow();
    expect(() => refuseAliases([], [...ranges, { path: b, start: MiB / 2, length: 4096 }])).toThrow(/overlaps/);
  });

  it('lets read-only origins share a file, never with a store range or a writer', () => {
    const readers = [
      { name: 'x', path: a, readOnly: true },
      { name: 'y', path: soft, readOnly: true },
    ];
    expect(() => refuseAliases(readers, [])).not.toThrow();
    expect(() => refuseAliases(readers, [{ path: hard, start: 0, length: 4096 }])).toThrow(/overlaps/);
    const writers = readers.map((r) => ({ ...r, readOnly: false }));
    expect(() => refuseAliases(writers, [])).toThrow(/origin device y .* overlaps the origin device x/);
  });

  it('sees a loop device as its backing file, shifted by the loop offset', (ctx) => {
    const backing = file('loop.img');
    const loop = attachLoop(backing, MiB);
    if ('reason' in loop) return noLoop(loop.reason, ctx.skip);
    try {
      const id = identify(loop.device, 4096, 4096);
      expect(id.key).toBe(identify(backing).key);
      expect([id.start, id.end]).toEqual([MiB + 4096, MiB + 8192]);
      expect(id.layers.map((l) => l.kind)).toEqual(['loop', 'file']);
      expect(overlaps(id, identify(backing, MiB + 8000, 10))).toBe(true);
      expect(overlaps(id, identify(backing, 0, MiB))).toBe(false);
    } finally {
      detachLoop(loop.device);
    }
  });
});

describe('a partition', () => {
  it('is its disk over the partition extent, down to the backing file of a loop device', (ctx) => {
    const image = mbrImage(join(dir.path, 'mbr.img'), 8 * MiB, 2048, 4096);
    const loop = attachLoop(image);
    if ('reason' in loop) return noLoop(loop.reason, ctx.skip);
    try {
      const part = addPartitions(loop.device);
      if ('reason' in part) return noLoop(part.reason, ctx.skip);
      try {
        const id = identify(part.partition, 512, 4096);
        expect(id.layers.map((l) => l.kind)).toEqual(['partition', 'loop', 'file']);
        expect(id.key).toBe(identify(image).key);
        expect([id.start, id.end]).toEqual([MiB + 512, MiB + 4608]);
        // Cut at the partition's end.
        expect(identify(part.partition).end).toBe(MiB + 2 * MiB);
        expect(() =>
          refuseAliases(
            [{ name: 'disk', path: image, readOnly: true }],
            [{ path: part.partition, start: 0, length: 4096 }],
          ),
        ).toThrow(/overlaps the origin device disk .*a partition over .*over .*mbr\.img/);
        const other = identify(image, 4 * MiB, MiB);
        expect(overlaps(id, other)).toBe(false);
        if (native !== undefined) {
          // One process using the disk and its partition as two things is refused.
          const whole = claimStorage(loop.device, { exclusive: true, role: 'store' });
          try {
            expect(() => claimStorage(part.partition, { exclusive: true, role: 'image' })).toThrow(
              /loop0?\d*p1 \(a partition over .*\) overlaps the store .* of this server/,
            );
          } finally {
            whole.release();
          }
          claimStorage(part.partition, { exclusive: true, role: 'image' }).release();
        }
      } finally {
        removePartitions(loop.device);
      }
    } finally {
      detachLoop(loop.device);
    }
  });
});

describe.skipIf(native === undefined)('claims', () => {
  const sub = join(dir.path, 'claims');
  mkdirSync(sub);

  it('the same user claims again; another user of the same bytes in this process is refused', () => {
    const path = file('claims/store.img');
    const first = claimStorage(path, { exclusive: true, role: 'store', start: 0, length: MiB });
    const again = claimStorage(path, { exclusive: true, role: 'store', start: 0, length: MiB });
    expect(() => claimStorage(path, { exclusive: true, role: 'image' })).toThrow(
      /overlaps the store .* of this server/,
    );
    // Other bytes of the same file are free for another user.
    const tail = claimStorage(path, { exclusive: true, role: 'image', start: 2 * MiB, length: MiB });
    for (const c of [first, again, tail]) c.release();
    claimStorage(path, { exclusive: true, role: 'image' }).release();
  });

  it('a lock held by another process is refused, naming its pid', async () => {
    const path = file('claims/held.img');
    const script = `const m = require(${JSON.stringify(join(ROOT, 'build/Release/fsx.node'))});
      const fd = require('node:fs').openSync(process.argv[1], 'r+');
      if (m.ofdLock(fd, true, 0, 4096) !== 0) process.exit(3);
      process.stdout.write('locked\\n'); setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['-e', script, path], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.once('data', () => resolve());
        child.once('exit', (code) => reject(new Error(`the lock holder exited (${code})`)));
      });
      expect(() => claimStorage(path, { exclusive: false, role: 'image' })).toThrow(
        new RegExp(`held\\.img is in use: held by pid ${child.pid} \\(`),
      );
      // Bytes it does not lock are free.
      claimStorage(path, { exclusive: true, role: 'store', start: 4096, length: 4096 }).release();
    } finally {
      child.kill('SIGKILL');
    }
  });
});
