/**
 * Chunk-boundary cases, one by one (blksnap's `boundary` test and more), for 4 KiB and 64 KiB
 * chunks on a device whose last chunk is short (8 MiB + 5.5 KiB): first and last sector of a
 * chunk, writes across a boundary (whole sectors and 3 bytes), unaligned writes, the last byte,
 * the whole short last chunk, TRIM and WRITE_ZEROES (NO_HOLE, may-trim, FAST_ZERO) across
 * chunks, one write over more than 32 chunks (parallel copies), many concurrent writes into one
 * chunk (one copy serves them), and snapshot reads racing the first origin write of a chunk.
 * After every case the origin and every snapshot are compared with their models around the
 * range touched (neighbouring chunks included), and whole at the end of each phase. A second and
 * third snapshot make several versions of the same chunks coexist.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { NbdClient } from '../../src/client/nbd-client.ts';
import { CommandFlag } from '../../src/nbd-protocol/index.ts';
import { assertSame, diskRig, KiB, MiB, outcome, TRIM_ZEROES, tempDir } from '../helpers/snapshots.ts';
import { diffImages, stampedData } from '../helpers/stamps.ts';

const SIZE = 8 * MiB + 5.5 * KiB;

describe.each([
  { chunk: '4K', cs: 4 * KiB },
  { chunk: '64K', cs: 64 * KiB },
])('chunk boundaries, chunk size $chunk', ({ chunk, cs }) => {
  const dir = tempDir('nbdsnap-bound-');
  const { origin, rig } = diskRig(dir.path, SIZE, 64 * MiB, { chunkSize: chunk });
  const last = Math.floor(SIZE / cs) * cs; // start of the short last chunk
  const snaps = new Map<string, Buffer>();
  let clients: NbdClient[] = [];
  let seq = 1;
  let cursor = 1; // next unused chunk: each case gets fresh chunks
  const take = (n: number) => {
    const c = cursor;
    cursor += n;
    expect(cursor * cs).toBeLessThan(last);
    return c * cs;
  };

  afterAll(async () => {
    await rig.stop();
    dir.cleanup();
  });

  /** Compare [from, to) (widened by a chunk each side) of the origin and every snapshot with the models. */
  async function check(what: string, from = 0, to = SIZE): Promise<void> {
    const lo = Math.max(0, Math.floor(from / cs) * cs - cs);
    const hi = Math.min(SIZE, Math.ceil(to / cs) * cs + cs);
    const views: [string, Buffer][] = [
      ['disk', origin],
      ...[...snaps].map(([n, m]): [string, Buffer] => [`disk@${n}`, m]),
    ];
    for (const [name, model] of views) {
      const c = await rig.open(name);
      const got = await c.read(lo, hi - lo);
      await c.close();
      const d = diffImages(got, model.subarray(lo, hi), lo);
      if (d !== undefined) throw new Error(`${name} after ${what} (chunk ${chunk}): ${d}`);
    }
  }

  const write = async (what: string, offset: number, length: number, flags = 0) => {
    const data = stampedData(seq++, offset, length);
    await (clients[0] as NbdClient).write(offset, data, flags);
    data.copy(origin, offset);
    await check(what, offset, offset + length);
  };
  const trim = async (what: string, offset: number, length: number) => {
    await (clients[0] as NbdClient).trim(offset, length);
    if (TRIM_ZEROES) origin.fill(0, offset, offset + length);
    await check(what, offset, offset + length);
  };
  const zero = async (what: string, offset: number, length: number, flags: number) => {
    const r = await outcome((clients[0] as NbdClient).writeZeroes(offset, length, flags));
    if (r === 'ok') origin.fill(0, offset, offset + length);
    else
      expect(r, `${what}: only FAST_ZERO may be refused`).toBe(
        (flags & CommandFlag.FAST_ZERO) !== 0 ? 'ENOTSUP' : 'ok',
      );
    await check(what, offset, offset + length);
  };
  const snapshot = async (name: string) => {
    await rig.createSnapshot('disk', name);
    snaps.set(name, Buffer.from(origin));
  };
  const checkWhole = async (what: string) => {
    assertSame(await rig.readAll('disk'), origin, `origin, ${what}`);
    for (const [n, m] of snaps) assertSame(await rig.readAll(`disk@${n}`), m, `disk@${n}, ${what}`);
  };

  it('phase 1: every kind of edge against one snapshot', async () => {
    await rig.start();
    clients = await Promise.all([0, 1, 2, 3].map(() => rig.open('disk')));
    await snapshot('s1');

    const a = take(1);
    await write('the first sector of a chunk', a, 512);
    const b = take(1);
    await write('the last sector of a chunk', b + cs - 512, 512);
    const c = take(2);
    await write('two sectors across a boundary', c + cs - 512, 1024);
    const d = take(2);
    await write('three bytes across a boundary', d + cs - 1, 3);
    const e = take(1);
    await write('1000 bytes at byte 7 of a chunk', e + 7, 1000);
    await write('the last byte of the device', SIZE - 1, 1);
    const t = take(3);
    await trim('TRIM across three chunks, unaligned', t + 100, 2 * cs + 50);
    const z = take(2);
    await zero('WRITE_ZEROES with NO_HOLE across a boundary, unaligned', z + cs - 300, 600, CommandFlag.NO_HOLE);
    const y = take(3);
    await zero('WRITE_ZEROES that may punch, over three chunks', y, 3 * cs, 0);
    const f = take(1);
    await zero('FAST_ZERO of a chunk', f, cs, CommandFlag.FAST_ZERO);
    const big = take(40);
    await write('one write over 40 chunks', big + 512, 40 * cs - 1024, CommandFlag.FUA);

    // Many writes into one chunk at once, on four connections: one copy, every write lands.
    const same = take(1);
    const pieces = Math.min(16, cs / 512);
    const writes = Array.from({ length: pieces }, (_, i) => {
      const off = same + (i * cs) / pieces;
      const data = stampedData(seq++, off, cs / pieces);
      data.copy(origin, off);
      return (clients[i % clients.length] as NbdClient).write(off, data);
    });
    await Promise.all(writes);
    await check('concurrent writes into one chunk', same, same + cs);

    // Snapshot reads racing the first origin write of each chunk: the read sees the old data.
    const race = take(10);
    const reader = await rig.open('disk@s1');
    for (let i = 0; i < 10; i++) {
      const off = race + i * cs;
      const data = stampedData(seq++, off, cs);
      const [old] = await Promise.all([reader.read(off, cs), (clients[i % 4] as NbdClient).write(off, data)]);
      data.copy(origin, off);
      assertSame(
        old,
        (snaps.get('s1') as Buffer).subarray(off, off + cs),
        `snapshot read racing a write, chunk ${off / cs}`,
      );
    }
    await reader.close();
    await checkWhole('phase 1');
  });

  it('phase 2: a second snapshot, the short last chunk, the same chunks again', async () => {
    await snapshot('s2');
    await write('the whole short last chunk', last, SIZE - last);
    await write('from the last full chunk into the short one', last - 700, 1400);
    await trim('TRIM of the whole last chunk', last, SIZE - last);
    // Chunks that s1 already has a copy of: now s2 needs its own version.
    await write('two sectors across the first boundary again', cs * 2 - 512, 1024);
    await write('three bytes across a boundary again', cs * 6 - 1, 3);
    await zero('WRITE_ZEROES over chunks s1 holds', cs, 4 * cs, CommandFlag.NO_HOLE);
    await checkWhole('phase 2');
  });

  it('phase 3: delete the oldest, then a third snapshot over the same chunks', async () => {
    await rig.deleteSnapshot('disk', 's1');
    snaps.delete('s1');
    await checkWhole('s1 deleted');
    await write('a chunk s2 holds, after the delete', cs * 2, cs);
    await snapshot('s3');
    await write('the last byte again', SIZE - 1, 1);
    await trim('TRIM across the whole device', 0, SIZE);
    await checkWhole('phase 3');
    const list = await rig.list();
    expect(list.map((s) => `${s.name}:${s.state}`)).toEqual(['s2:valid', 's3:valid']);
  });
});
