/**
 * nbdinfo (libnbd) against a real `nbdsnap serve`: the plain and JSON reports, --list over
 * several exports, --map of a sparse file (holes come from SEEK_DATA/SEEK_HOLE), and --can / --is
 * for every flag, on a read-write server and on a `-r` one.
 */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, MiB, ok, pattern, run, sparseImage, stopQuietly, writeAt } from '../helpers/clients.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';

describe.skipIf(!hasTool('nbdinfo'))('nbdinfo', () => {
  const dir = tempDir();
  const image = join(dir.path, 'disk.img');
  let rw: RunningServer;
  let ro: RunningServer;

  beforeAll(async () => {
    sparseImage(image);
    // Data at [1 MiB, 2 MiB) and [8 MiB, 10 MiB); the rest is holes.
    writeAt(image, 1 * MiB, pattern(1 * MiB, 1));
    writeAt(image, 8 * MiB, pattern(2 * MiB, 2));
    // The read-only server serves a copy: a writer and a reader may not share one image (locks).
    const copy = join(dir.path, 'copy.img');
    copyFileSync(image, copy);
    [rw, ro] = await Promise.all([
      startServer([`disk=${image}`, '-D', 'interop disk', 'mem=memory:32M']),
      startServer([`disk=${copy}`, '-r']),
    ]);
  });

  afterAll(async () => {
    await Promise.all([stopQuietly(rw), stopQuietly(ro)]);
    dir.cleanup();
  });

  it('prints the plain report of one export', async () => {
    const out = ok(await run('nbdinfo', [rw.uri('disk')]), 'nbdinfo');
    const lines = out.split('\n').map((l) => l.trim());
    expect(lines[0]).toBe('protocol: newstyle-fixed without TLS, using structured packets');
    for (const line of [
      'export="disk":',
      'description: interop disk',
      'export-size: 67108864 (64M)',
      `uri: ${rw.uri('disk')}`,
      'base:allocation',
      'is_read_only: false',
      'is_rotational: false',
      'can_trim: true',
      'can_zero: true',
      'can_fast_zero: true',
      'can_multi_conn: true',
      'block_size_minimum: 1',
      'block_size_preferred: 4096',
      'block_size_maximum: 33554432',
    ]) {
      expect(lines).toContain(line);
    }
  });

  it('prints valid JSON with sizes, contexts and flags', async () => {
    const info = JSON.parse(ok(await run('nbdinfo', ['--json', rw.uri('disk')]), 'nbdinfo --json'));
    expect(info).toMatchObject({ protocol: 'newstyle-fixed', TLS: false, structured: true });
    expect(info.exports).toHaveLength(1);
    expect(info.exports[0]).toMatchObject({
      'export-name': 'disk',
      description: 'interop disk',
      'export-size': 64 * MiB,
      contexts: ['base:allocation'],
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_df: true,
      can_cache: true,
      block_size_maximum: 32 * MiB,
    });
  });

  it('lists every export with --list', async () => {
    const info = JSON.parse(ok(await run('nbdinfo', ['--list', '--json', rw.uri()]), 'nbdinfo --list'));
    const byName = Object.fromEntries((info.exports as { 'export-name': string }[]).map((e) => [e['export-name'], e]));
    expect(Object.keys(byName).sort()).toEqual(['disk', 'mem']);
    expect(byName.disk).toMatchObject({ 'export-size': 64 * MiB, description: 'interop disk' });
    expect(byName.mem).toMatchObject({ 'export-size': 32 * MiB, contexts: ['base:allocation'] });

    const text = ok(await run('nbdinfo', ['--list', rw.uri()]), 'nbdinfo --list');
    expect(text.match(/^export="[^"]*":$/gm)).toEqual(['export="disk":', 'export="mem":']);
  });

  it('serves the first export as the default export ""', async () => {
    expect(ok(await run('nbdinfo', ['--size', rw.uri()])).trim()).toBe(String(64 * MiB));
    expect(ok(await run('nbdinfo', ['--size', rw.uri('mem')])).trim()).toBe(String(32 * MiB));
  });

  it('refuses an unknown export name', async () => {
    const r = await run('nbdinfo', [rw.uri('nosuch')]);
    expect(r.code).toBe(1);
    // NBD_REP_ERR_UNKNOWN, which libnbd words as ENOENT.
    expect(r.stderr).toContain('server replied with error to opt_go request: No such file or directory');
    expect(r.stderr).toContain('nosuch');
  });

  it('maps the holes of a sparse file with --map', async () => {
    const out = ok(await run('nbdinfo', ['--map', rw.uri('disk')]), 'nbdinfo --map');
    const rows = out
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/));
    expect(rows).toEqual([
      ['0', String(1 * MiB), '3', 'hole,zero'],
      [String(1 * MiB), String(1 * MiB), '0', 'data'],
      [String(2 * MiB), String(6 * MiB), '3', 'hole,zero'],
      [String(8 * MiB), String(2 * MiB), '0', 'data'],
      [String(10 * MiB), String(54 * MiB), '3', 'hole,zero'],
    ]);
    const totals = ok(await run('nbdinfo', ['--map', '--totals', rw.uri('disk')]), 'nbdinfo --map --totals');
    expect(
      totals
        .trim()
        .split('\n')
        .map((l) => l.trim().split(/\s+/)),
    ).toEqual([
      [String(3 * MiB), '4.7%', '0', 'data'],
      [String(61 * MiB), '95.3%', '3', 'hole,zero'],
    ]);
  });

  it('maps an untouched memory export as one hole', async () => {
    const out = ok(await run('nbdinfo', ['--map', rw.uri('mem')]), 'nbdinfo --map');
    expect(out.trim().split(/\s+/)).toEqual(['0', String(32 * MiB), '3', 'hole,zero']);
  });

  it('refuses a metadata context the server does not offer', async () => {
    const r = await run('nbdinfo', ['--map=x-nosuch:nothing', rw.uri('disk')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('server does not support metadata context "x-nosuch:nothing"');
  });

  // Exit status of `nbdinfo --can FLAG` / `--is FLAG`: 0 = yes, 2 = no.
  const CAN_RW: Record<string, number> = {
    connect: 0,
    read: 0,
    write: 0,
    flush: 0,
    fua: 0,
    trim: 0,
    zero: 0,
    'fast-zero': 0,
    'multi-conn': 0,
    cache: 0,
    df: 0,
    'structured-reply': 0,
  };
  const CAN_RO: Record<string, number> = { ...CAN_RW, write: 2, fua: 2, trim: 2, zero: 2, 'fast-zero': 2 };
  const IS_RW: Record<string, number> = { 'read-only': 2, rotational: 2, tls: 2 };
  const IS_RO: Record<string, number> = { ...IS_RW, 'read-only': 0 };

  async function exitCodes(server: RunningServer, mode: '--can' | '--is', flags: Record<string, number>) {
    const entries = await Promise.all(
      Object.keys(flags).map(async (f) => {
        const r = await run('nbdinfo', [mode, f, server.uri('disk')]);
        return [f, r.code] as const;
      }),
    );
    return Object.fromEntries(entries);
  }

  it('answers --can and --is for every flag on a read-write export', async () => {
    expect(await exitCodes(rw, '--can', CAN_RW)).toEqual(CAN_RW);
    expect(await exitCodes(rw, '--is', IS_RW)).toEqual(IS_RW);
  });

  it('answers --can and --is for every flag on a read-only (-r) export', async () => {
    expect(await exitCodes(ro, '--can', CAN_RO)).toEqual(CAN_RO);
    expect(await exitCodes(ro, '--is', IS_RO)).toEqual(IS_RO);
    const info = JSON.parse(ok(await run('nbdinfo', ['--json', ro.uri('disk')])));
    expect(info.exports[0]).toMatchObject({ is_read_only: true, can_trim: false, can_zero: false });
  });
});
