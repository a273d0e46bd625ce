/**
 * nbdcopy in and out of a real `nbdsnap serve`, with 4 connections (the server advertises
 * multi-conn), a sparse source (its holes arrive as one large WRITE_ZEROES) and --flush; every
 * copy is compared byte for byte, and the holes must survive the trip.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, MiB, ok, pattern, run, sha256, sparseImage, stopQuietly, writeAt } from '../helpers/clients.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';

const SIZE = 64 * MiB;
/** Data regions of the sparse source: [offset, length, seed]. */
const REGIONS: [number, number, number][] = [
  [0, 64 * 1024, 1],
  [3 * MiB, 2 * MiB, 2],
  [17 * MiB + 4096, 300 * 1024, 3],
  [40 * MiB, 8 * MiB, 4],
  [SIZE - MiB, MiB, 5],
];

/** Number of server log lines (JSON, one per line) containing `text`. */
const logCount = (srv: RunningServer, text: string): number =>
  srv
    .stderr()
    .split('\n')
    .filter((l) => l.includes(text)).length;
const connections = (srv: RunningServer): number => logCount(srv, '"msg":"connected"');

describe.skipIf(!hasTool('nbdcopy'))('nbdcopy', () => {
  const dir = tempDir();
  const src = join(dir.path, 'src.img');
  const dst = join(dir.path, 'dst.img');
  let srv: RunningServer;

  beforeAll(async () => {
    sparseImage(src, SIZE);
    for (const [offset, length, seed] of REGIONS) writeAt(src, offset, pattern(length, seed));
    // The target starts full of garbage, so a hole that is not zeroed would show.
    sparseImage(dst, SIZE);
    writeAt(dst, 0, pattern(SIZE, 99));
    // Debug logging records every request, so the FLUSHes and WRITE_ZEROES can be counted.
    srv = await startServer([`dst=${dst}`, 'mem=memory:64M', '--log-level', 'debug']);
  });

  afterAll(async () => {
    await stopQuietly(srv);
    dir.cleanup();
  });

  it('copies a sparse file in with 4 connections and --flush', async () => {
    const before = [connections(srv), logCount(srv, '"cmd":"FLUSH"'), logCount(srv, '"cmd":"WRITE_ZEROES"')];
    ok(await run('nbdcopy', ['--connections=4', '--threads=4', '--flush', src, srv.uri('dst')]), 'nbdcopy in');
    expect(connections(srv) - (before[0] as number)).toBe(4);
    // --flush: one FLUSH per connection; the holes went as WRITE_ZEROES, not as data.
    expect(logCount(srv, '"cmd":"FLUSH"') - (before[1] as number)).toBe(4);
    expect(logCount(srv, '"cmd":"WRITE_ZEROES"') - (before[2] as number)).toBeGreaterThan(0);
    expect(sha256(dst)).toBe(sha256(src));
    // The holes of the source are holes of the export again (WRITE_ZEROES may trim).
    const map = async (target: string) => ok(await run('nbdinfo', ['--map', target]), 'nbdinfo --map');
    const want = REGIONS.map(([offset, length]) => [offset, length]);
    const got = (await map(srv.uri('dst')))
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f[3] === 'data')
      .map((f) => [Number(f[0]), Number(f[1])]);
    // File systems allocate in 4 KiB blocks; the data regions are 4 KiB aligned.
    expect(got).toEqual(want);
  });

  it('copies the export out with 4 connections, byte for byte', async () => {
    const out = join(dir.path, 'out.img');
    const before = connections(srv);
    ok(await run('nbdcopy', ['--connections=4', '--threads=4', srv.uri('dst'), out]), 'nbdcopy out');
    expect(connections(srv) - before).toBe(4);
    expect(sha256(out)).toBe(sha256(src));
  });

  it('round-trips through a memory export and a pipe', async () => {
    ok(await run('nbdcopy', ['--connections=4', '--threads=4', '--flush', src, srv.uri('mem')]), 'nbdcopy in');
    const piped = await run('sh', ['-c', `nbdcopy --connections=4 --threads=4 '${srv.uri('mem')}' - | sha256sum`]);
    expect(ok(piped).split(' ')[0]).toBe(sha256(src));
    const out = join(dir.path, 'mem-out.img');
    ok(await run('nbdcopy', ['--connections=4', '--threads=4', srv.uri('mem'), out]), 'nbdcopy out');
    expect(sha256(out)).toBe(sha256(src));
  });

  it('copies between two exports of the same server', async () => {
    // Fill the memory export with garbage first, then copy dst -> mem over it.
    const garbage = join(dir.path, 'garbage.img');
    sparseImage(garbage, SIZE);
    writeAt(garbage, 0, pattern(SIZE, 7));
    ok(await run('nbdcopy', [garbage, srv.uri('mem')]), 'nbdcopy garbage in');
    ok(await run('nbdcopy', ['--flush', srv.uri('dst'), srv.uri('mem')]), 'nbdcopy nbd -> nbd');
    const out = join(dir.path, 'mem-out2.img');
    ok(await run('nbdcopy', [srv.uri('mem'), out]), 'nbdcopy out');
    expect(sha256(out)).toBe(sha256(src));
  });
});
