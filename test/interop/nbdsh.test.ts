/**
 * nbdsh (libnbd's Python shell) against a real `nbdsnap serve`: the handshake variants (simple
 * replies only, client flags 0 = NBD_OPT_EXPORT_NAME, GO without a block-size request), every
 * command and flag, requests that must fail (strict mode off, so libnbd sends them) answered
 * with the right errno while the connection stays usable, and a read-only export.
 *
 * Each script reports through `out` (see nbdsh() in helpers/clients.ts); the assertions are here.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, MiB, nbdsh, readAt, sameBytes, sparseImage, stopQuietly } from '../helpers/clients.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';

const SIZE = 64 * MiB;

describe.skipIf(!hasTool('nbdsh'))('nbdsh', () => {
  const dir = tempDir();
  const image = join(dir.path, 'disk.img');
  const roImage = join(dir.path, 'ro.img');
  let rw: RunningServer;
  let ro: RunningServer;

  beforeAll(async () => {
    sparseImage(image, SIZE);
    sparseImage(roImage, SIZE);
    [rw, ro] = await Promise.all([startServer([`disk=${image}`]), startServer([`disk=${roImage}`, '-r'])]);
  });

  afterAll(async () => {
    await Promise.all([stopQuietly(rw), stopQuietly(ro)]);
    dir.cleanup();
  });

  describe('handshake variants', () => {
    it('works with simple replies only', async () => {
      const out = await nbdsh(`
h.set_request_structured_replies(False)
h.connect_uri(${JSON.stringify(rw.uri('disk'))})
out['protocol'] = h.get_protocol()
out['structured'] = h.get_structured_replies_negotiated()
out['df'] = h.can_df()
out['meta'] = h.can_meta_context('base:allocation')
h.pwrite(b'\\x5a' * 512, 32 << 20)
out['read'] = h.pread(512, 32 << 20).hex()
out['size'] = h.get_size()
h.shutdown()
`);
      expect(out).toEqual({
        protocol: 'newstyle-fixed',
        structured: false,
        df: false,
        meta: false,
        read: '5a'.repeat(512),
        size: SIZE,
      });
      expect(sameBytes(readAt(image, 32 * MiB, 512), Buffer.alloc(512, 0x5a))).toBe('equal');
    });

    it('works with client flags 0 (the NBD_OPT_EXPORT_NAME path)', async () => {
      const out = await nbdsh(`
h.set_handshake_flags(0)
h.connect_uri(${JSON.stringify(rw.uri('disk'))})
out['protocol'] = h.get_protocol()
out['structured'] = h.get_structured_replies_negotiated()
out['size'] = h.get_size()
out['flush'] = h.can_flush()
out['trim'] = h.can_trim()
out['ro'] = h.is_read_only()
out['read'] = h.pread(512, 32 << 20).hex()
h.shutdown()
`);
      expect(out).toEqual({
        protocol: 'newstyle',
        structured: false,
        size: SIZE,
        flush: true,
        trim: true,
        ro: false,
        read: '5a'.repeat(512),
      });
    });

    it('works with GO without a block-size request', async () => {
      const out = await nbdsh(`
h.set_request_block_size(False)
h.connect_uri(${JSON.stringify(rw.uri('disk'))})
out['protocol'] = h.get_protocol()
out['structured'] = h.get_structured_replies_negotiated()
out['max'] = h.get_block_size(nbd.SIZE_MAXIMUM)
out['read'] = len(h.pread(1 << 20, 0))
h.shutdown()
`);
      expect(out).toEqual({ protocol: 'newstyle-fixed', structured: true, max: 32 * MiB, read: MiB });
    });
  });

  it('serves every command and flag', async () => {
    const out = await nbdsh(
      `
M = 1 << 20
def extents(length, offset, flags=0):
    got = []
    def cb(ctx, off, e, err):
        got.append([ctx, off, [list(p) for p in zip(e[0::2], e[1::2])]])
    h.block_status(length, offset, cb, flags)
    return got

h.pwrite(b'\\xaa' * 65536, 0, nbd.CMD_FLAG_FUA)
out['fua_read'] = h.pread(65536, 0) == b'\\xaa' * 65536
chunks = []
h.pread_structured(65536, 0, lambda b, off, st, err: chunks.append([off, len(b), st, b[:4].hex()]), nbd.CMD_FLAG_DF)
out['df_chunks'] = chunks
hole_chunks = []
h.pread_structured(4096, 40 * M, lambda b, off, st, err: hole_chunks.append([off, len(b), st, b == bytes(4096)]), nbd.CMD_FLAG_DF)
out['df_hole_chunks'] = hole_chunks
for i in range(1, 6):
    h.pwrite(bytes([0x10 + i]) * M, i * M)
out['written'] = [h.pread(2, i * M).hex() for i in range(1, 6)]
out['flush'] = attempt(h.flush)
out['cache'] = attempt(h.cache, M, 0)
out['trim'] = attempt(h.trim, M, 1 * M)
out['zero'] = attempt(h.zero, M, 2 * M)
out['zero_no_hole'] = attempt(h.zero, M, 3 * M, nbd.CMD_FLAG_NO_HOLE)
out['zero_fast'] = attempt(h.zero, M, 4 * M, nbd.CMD_FLAG_FAST_ZERO)
out['zero_fua'] = attempt(h.zero, 4096, 3 * M, nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE)
out['trim_fua'] = attempt(h.trim, 4096, 7 * M, nbd.CMD_FLAG_FUA)
out['zeroed'] = [h.pread(M, i * M) == bytes(M) for i in range(1, 5)]
out['kept'] = h.pread(2, 5 * M).hex()
out['bs_head'] = extents(3 * M, 0)
out['bs_tail'] = extents(4 * M, 4 * M)
out['bs_one'] = extents(8 * M, 0, nbd.CMD_FLAG_REQ_ONE)
out['bs_one_mid'] = extents(2 * M, 5 * M, nbd.CMD_FLAG_REQ_ONE)
out['bs_short'] = extents(4096, 5 * M)
h.shutdown()
`,
      rw.uri('disk'),
      { baseAllocation: true },
    );
    expect(out.fua_read).toBe(true);
    // DF: exactly one OFFSET_DATA chunk (status 1 = DATA) covering the whole read.
    expect(out.df_chunks).toEqual([[0, 65536, 1, 'aaaaaaaa']]);
    expect(out.df_hole_chunks).toEqual([[40 * MiB, 4096, 1, true]]);
    expect(out.written).toEqual(['1111', '1212', '1313', '1414', '1515']);
    for (const k of ['flush', 'cache', 'trim', 'zero', 'zero_no_hole', 'zero_fast', 'zero_fua', 'trim_fua'])
      expect([k, out[k]]).toEqual([k, 'ok']);
    expect(out.zeroed).toEqual([true, true, true, true]);
    expect(out.kept).toBe('1515');
    // The file itself: FUA data and zeroes are there, the 0x15 MiB survived.
    expect(sameBytes(readAt(image, 0, 65536), Buffer.alloc(65536, 0xaa))).toBe('equal');
    expect(sameBytes(readAt(image, 3 * MiB, MiB), Buffer.alloc(MiB))).toBe('equal');
    expect(sameBytes(readAt(image, 5 * MiB, MiB), Buffer.alloc(MiB, 0x15))).toBe('equal');
    // TRIM and may-trim zeroes punched holes (flags 3 = hole,zero); the written head is data.
    expect(out.bs_head).toEqual([
      [
        'base:allocation',
        0,
        [
          [65536, 0],
          [3 * MiB - 65536, 3],
        ],
      ],
    ]);
    // [3 MiB, 4 MiB) was zeroed with NO_HOLE: allocated or not is the file system's business,
    // so it is left out. From 4 MiB: the FAST_ZERO hole, the 0x15 MiB, never-written holes.
    expect(out.bs_tail).toEqual([
      [
        'base:allocation',
        4 * MiB,
        [
          [MiB, 3],
          [MiB, 0],
          [2 * MiB, 3],
        ],
      ],
    ]);
    // REQ_ONE: a single extent, never past the request.
    expect(out.bs_one).toEqual([['base:allocation', 0, [[65536, 0]]]]);
    expect(out.bs_one_mid).toEqual([['base:allocation', 5 * MiB, [[MiB, 0]]]]);
    // Without REQ_ONE the last extent may run past the request (the spec allows it), but it
    // must cover the request and describe data.
    const short = out.bs_short as [string, number, number[][]][];
    expect(short).toHaveLength(1);
    const [len, flags] = short[0]?.[2]?.[0] ?? [];
    expect(flags).toBe(0);
    expect(len).toBeGreaterThanOrEqual(4096);
  });

  it('answers invalid requests with the right error and stays usable', async () => {
    const out = await nbdsh(
      `
h.set_strict_mode(0)
E = ${SIZE}
res = {}
def check(name, f, *args):
    res[name] = attempt(f, *args)
    res[name + ' then read'] = h.pread(4, 0).hex()
check('read past end', h.pread, 512, E)
check('read across end', h.pread, 1024, E - 512)
check('read far past end', h.pread, 512, 1 << 50)
check('write past end', h.pwrite, b'x' * 512, E)
check('write across end', h.pwrite, b'x' * 1024, E - 512)
check('zero past end', h.zero, 4096, E)
check('trim past end', h.trim, 4096, E)
check('cache past end', h.cache, 4096, E)
check('status past end', h.block_status, 4096, E, lambda *a: 0)
check('zero-length read', h.pread, 0, 0)
check('read with unknown flag', h.pread, 512, 0, 0x40)
check('write with NO_HOLE', h.pwrite, b'x' * 512, 0, nbd.CMD_FLAG_NO_HOLE)
check('trim with FAST_ZERO', h.trim, 4096, 0, nbd.CMD_FLAG_FAST_ZERO)
check('flush with REQ_ONE', h.flush, nbd.CMD_FLAG_REQ_ONE)
check('read with REQ_ONE', h.pread, 512, 0, nbd.CMD_FLAG_REQ_ONE)
check('zero with DF', h.zero, 4096, 0, nbd.CMD_FLAG_DF)
out['res'] = res
out['last_write'] = h.pread(512, E - 512) == bytes(512)
h.shutdown()
`,
      rw.uri('disk'),
      { baseAllocation: true },
    );
    const expected: Record<string, string> = {
      'read past end': 'EINVAL',
      'read across end': 'EINVAL',
      'read far past end': 'EINVAL',
      'write past end': 'ENOSPC',
      'write across end': 'ENOSPC',
      'zero past end': 'ENOSPC',
      'trim past end': 'EINVAL',
      'cache past end': 'EINVAL',
      'status past end': 'EINVAL',
      'zero-length read': 'EINVAL',
      'read with unknown flag': 'EINVAL',
      'write with NO_HOLE': 'EINVAL',
      'trim with FAST_ZERO': 'EINVAL',
      'flush with REQ_ONE': 'EINVAL',
      'read with REQ_ONE': 'EINVAL',
      'zero with DF': 'EINVAL',
    };
    const want: Record<string, string> = {};
    for (const [k, v] of Object.entries(expected)) {
      want[k] = v;
      want[`${k} then read`] = 'aaaaaaaa';
    }
    expect(out.res).toEqual(want);
    // A refused write across the end changed nothing.
    expect(out.last_write).toBe(true);
  });

  it('refuses DF without structured replies', async () => {
    const out = await nbdsh(`
h.set_request_structured_replies(False)
h.set_strict_mode(0)
h.connect_uri(${JSON.stringify(rw.uri('disk'))})
out['df'] = attempt(h.pread, 512, 0, nbd.CMD_FLAG_DF)
out['after'] = h.pread(4, 0).hex()
h.shutdown()
`);
    expect(out).toEqual({ df: 'EINVAL', after: 'aaaaaaaa' });
  });

  it('answers writes, trims and zeroes on a read-only export with EPERM', async () => {
    const out = await nbdsh(
      `
h.set_strict_mode(0)
out['ro'] = h.is_read_only()
out['write'] = attempt(h.pwrite, b'x' * 512, 0)
out['write_fua'] = attempt(h.pwrite, b'x' * 512, 0, nbd.CMD_FLAG_FUA)
out['trim'] = attempt(h.trim, 4096, 0)
out['zero'] = attempt(h.zero, 4096, 0)
out['zero_fast'] = attempt(h.zero, 4096, 0, nbd.CMD_FLAG_FAST_ZERO)
out['read'] = attempt(h.pread, 4096, 0)
out['flush'] = attempt(h.flush)
out['cache'] = attempt(h.cache, 4096, 0)
out['status'] = attempt(h.block_status, 4096, 0, lambda *a: 0)
out['data'] = h.pread(512, 0) == bytes(512)
h.shutdown()
`,
      ro.uri('disk'),
      { baseAllocation: true },
    );
    expect(out).toEqual({
      ro: true,
      write: 'EPERM',
      write_fua: 'EPERM',
      trim: 'EPERM',
      zero: 'EPERM',
      zero_fast: 'EPERM',
      read: 'ok',
      flush: 'ok',
      cache: 'ok',
      status: 'ok',
      data: true,
    });
    expect(sameBytes(readAt(roImage, 0, 512), Buffer.alloc(512))).toBe('equal');
  });
});
