/**
 * qemu-img (info, map, convert, compare) and qemu-io against a real `nbdsnap serve`. qemu is the
 * strictest client about metadata contexts (one query, one byte-identical reply) and always
 * uses REQ_ONE for block status. The qemu-io commands are checked twice: the NBD command and
 * flags the server received (its debug log), and the data read back (qemu-io `read -P`, which
 * makes qemu-io exit 1 on a mismatch, and the image file itself).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  hasTool,
  MiB,
  ok,
  pattern,
  readAt,
  run,
  sameBytes,
  sha256,
  sparseImage,
  stopQuietly,
  writeAt,
} from '../helpers/clients.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';

const SIZE = 64 * MiB;

interface LoggedRequest {
  cmd: string;
  offset: number;
  length: number;
  flags: number;
}

/** The requests the server logged (debug level) after the first `skip` of them. */
function requests(srv: RunningServer, skip = 0): LoggedRequest[] {
  return srv
    .stderr()
    .split('\n')
    .filter((l) => l.includes('"msg":"request"'))
    .map((l) => JSON.parse(l) as LoggedRequest)
    .slice(skip)
    .map(({ cmd, offset, length, flags }) => ({ cmd, offset, length, flags }));
}

describe.skipIf(!hasTool('qemu-img') || !hasTool('qemu-io'))('qemu-img and qemu-io', () => {
  const dir = tempDir();
  const src = join(dir.path, 'src.img');
  const target = join(dir.path, 'target.img');
  const scratch = join(dir.path, 'scratch.img');
  let srv: RunningServer;

  beforeAll(async () => {
    sparseImage(src, SIZE);
    writeAt(src, 0, pattern(MiB, 1));
    writeAt(src, 10 * MiB, pattern(3 * MiB, 2));
    writeAt(src, SIZE - 64 * 1024, pattern(64 * 1024, 3));
    sparseImage(target, SIZE);
    sparseImage(scratch, SIZE);
    srv = await startServer([`target=${target}`, `scratch=${scratch}`, '--log-level', 'debug']);
  });

  afterAll(async () => {
    await stopQuietly(srv);
    dir.cleanup();
  });

  it('qemu-img info reports a raw 64 MiB image, with and without -f', async () => {
    const info = JSON.parse(ok(await run('qemu-img', ['info', '-f', 'raw', '--output=json', srv.uri('target')])));
    expect(info).toMatchObject({ 'virtual-size': SIZE, format: 'raw', filename: srv.uri('target') });
    const probed = ok(await run('qemu-img', ['info', srv.uri('target')]), 'qemu-img info');
    expect(probed).toContain('file format: raw');
    expect(probed).toContain('virtual size: 64 MiB (67108864 bytes)');
  });

  it('qemu-img convert writes a sparse source, and compare agrees', async () => {
    ok(await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, srv.uri('target')]), 'qemu-img convert');
    expect(sha256(target)).toBe(sha256(src));
    const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, srv.uri('target')]);
    expect([same.code, same.stdout.trim()]).toEqual([0, 'Images are identical.']);
  });

  it('qemu-img map shows the holes through base:allocation', async () => {
    const map = JSON.parse(ok(await run('qemu-img', ['map', '-f', 'raw', '--output=json', srv.uri('target')])));
    const data = (map as { start: number; length: number; data: boolean; zero: boolean }[]).map((e) => [
      e.start,
      e.length,
      e.data,
      e.zero,
    ]);
    expect(data).toEqual([
      [0, MiB, true, false],
      [MiB, 9 * MiB, false, true],
      [10 * MiB, 3 * MiB, true, false],
      [13 * MiB, SIZE - 13 * MiB - 64 * 1024, false, true],
      [SIZE - 64 * 1024, 64 * 1024, true, false],
    ]);
    // qemu asks with REQ_ONE (flag 8), always.
    const bs = requests(srv).filter((r) => r.cmd === 'BLOCK_STATUS');
    expect(bs.length).toBeGreaterThan(0);
    expect(bs.every((r) => r.flags === 8)).toBe(true);
  });

  it('qemu-img compare finds a changed byte', async () => {
    ok(await run('qemu-io', ['-f', 'raw', srv.uri('target'), '-c', 'write -P 0x42 12345k 1k']), 'qemu-io write');
    const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, srv.uri('target')]);
    expect(diff.code).toBe(1);
    expect(diff.stdout.trim()).toBe(`Content mismatch at offset ${12345 * 1024}!`);
  });

  it('serves the qemu-io command set with the right NBD commands and flags', async () => {
    const u = srv.uri('scratch');
    const before = requests(srv).length;
    const cmds = [
      'write -P 0x77 1M 4M',
      'write -P 0xab 0 64k',
      'read -P 0xab 0 64k',
      'write -f -P 0xcd 64k 64k',
      'write -z 1M 1M',
      'write -z -u 2M 1M',
      'write -z -n -u 3M 1M',
      'discard 4M 1M',
      'flush',
      'aio_write -P 0x11 4M 64k',
      'aio_write -P 0x22 5M 64k',
      'aio_flush',
    ];
    const r = await run('qemu-io', ['-f', 'raw', '-t', 'writeback', u, ...cmds.flatMap((c) => ['-c', c])]);
    ok(r, 'qemu-io');
    expect(r.stdout).not.toContain('failed');
    // What reached the server, in order (aio writes may be reordered between themselves).
    const seen = requests(srv, before).filter((q) => q.cmd !== 'BLOCK_STATUS');
    const aio = seen.slice(9, 11).sort((a, b) => a.offset - b.offset);
    expect([...seen.slice(0, 9), ...aio, ...seen.slice(11)]).toEqual([
      { cmd: 'WRITE', offset: MiB, length: 4 * MiB, flags: 0 },
      { cmd: 'WRITE', offset: 0, length: 65536, flags: 0 },
      { cmd: 'READ', offset: 0, length: 65536, flags: 0 },
      { cmd: 'WRITE', offset: 65536, length: 65536, flags: 1 }, // write -f: FUA
      { cmd: 'WRITE_ZEROES', offset: MiB, length: MiB, flags: 2 }, // -z: NO_HOLE
      { cmd: 'WRITE_ZEROES', offset: 2 * MiB, length: MiB, flags: 0 }, // -z -u: may trim
      { cmd: 'WRITE_ZEROES', offset: 3 * MiB, length: MiB, flags: 16 }, // -z -n -u: FAST_ZERO
      { cmd: 'TRIM', offset: 4 * MiB, length: MiB, flags: 0 },
      { cmd: 'FLUSH', offset: 0, length: 0, flags: 0 },
      { cmd: 'WRITE', offset: 4 * MiB, length: 65536, flags: 0 },
      { cmd: 'WRITE', offset: 5 * MiB, length: 65536, flags: 0 },
      { cmd: 'FLUSH', offset: 0, length: 0, flags: 0 },
      ...seen.slice(12).map(() => ({ cmd: 'FLUSH', offset: 0, length: 0, flags: 0 })),
    ]);

    // Read everything back through qemu-io: -P makes it exit 1 on any mismatch.
    const checks = [
      'read -P 0xab 0 64k',
      'read -P 0xcd 64k 64k',
      'read -P 0 128k 896k',
      'read -P 0 1M 3M',
      'read -P 0x11 4M 64k',
      'read -P 0 4160k 960k',
      'read -P 0x22 5M 64k',
      'read -P 0 5184k 1M',
    ];
    const back = await run('qemu-io', ['-f', 'raw', '-r', u, ...checks.flatMap((c) => ['-c', c])]);
    expect(back.stdout).not.toContain('Pattern verification failed');
    ok(back, 'qemu-io read back');

    // And the image file itself.
    expect(sameBytes(readAt(scratch, 0, 65536), Buffer.alloc(65536, 0xab))).toBe('equal');
    expect(sameBytes(readAt(scratch, 65536, 65536), Buffer.alloc(65536, 0xcd))).toBe('equal');
    expect(sameBytes(readAt(scratch, MiB, 3 * MiB), Buffer.alloc(3 * MiB))).toBe('equal');
    expect(sameBytes(readAt(scratch, 4 * MiB, 65536), Buffer.alloc(65536, 0x11))).toBe('equal');
    expect(sameBytes(readAt(scratch, 5 * MiB, 65536), Buffer.alloc(65536, 0x22))).toBe('equal');
  });

  it('qemu-img map sees the holes and allocated zeroes the commands left', async () => {
    // After the previous test: data [0,128k), [1M,2M) (NO_HOLE zeroes stay allocated),
    // [4M,+64k), [5M,+64k); the may-trim zeroes, FAST_ZERO and discard left holes.
    const map = JSON.parse(ok(await run('qemu-img', ['map', '-f', 'raw', '--output=json', srv.uri('scratch')])));
    const K = 1024;
    expect((map as { start: number; length: number; data: boolean }[]).map((e) => [e.start, e.length, e.data])).toEqual(
      [
        [0, 128 * K, true],
        [128 * K, 896 * K, false],
        [MiB, MiB, true],
        [2 * MiB, 2 * MiB, false],
        [4 * MiB, 64 * K, true],
        [4 * MiB + 64 * K, 960 * K, false],
        [5 * MiB, 64 * K, true],
        [5 * MiB + 64 * K, SIZE - 5 * MiB - 64 * K, false],
      ],
    );
  });
});
