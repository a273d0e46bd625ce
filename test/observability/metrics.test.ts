/**
 * `nbdsnap serve --metrics=127.0.0.1:PORT` scraped over HTTP while real clients run: the counters
 * move exactly as the clients' requests say (bytes read equal to what was read, requests counted,
 * a copy-on-write copy after the first write under a snapshot, errors by errno), the store
 * gauges are there, and every exposition passes a strict reader of the text format.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { background, hasTool, MiB, nbdsh, ok, pattern, stopQuietly } from '../helpers/clients.ts';
import { freshPort, type RunningServer, startServer, tempDir } from '../helpers/server.ts';
import { makeImage, makeSparse, nbdsnap } from '../helpers/snapshots.ts';
import { type Family, parseExposition, sampleValue } from './exposition.ts';

const SIZE = 64 * MiB;
const CHUNK = 64 * 1024;

describe.skipIf(!hasTool('nbdcopy') || !hasTool('nbdsh'))('metrics endpoint', () => {
  const dir = tempDir();
  const control = join(dir.path, 'ctl.sock');
  const metricsPort = freshPort();
  let srv: RunningServer;

  const scrape = async (): Promise<Map<string, Family>> => {
    const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return parseExposition(await res.text());
  };
  const read = (f: Map<string, Family>) => sampleValue(f, 'nbdsnap_read_bytes_total', { export: 'disk' });
  const reads = (f: Map<string, Family>) =>
    sampleValue(f, 'nbdsnap_requests_total', { export: 'disk', command: 'read' });

  beforeAll(async () => {
    makeImage(join(dir.path, 'disk.img'), pattern(SIZE, 7));
    makeSparse(join(dir.path, 'store.img'), SIZE);
    srv = await startServer([
      `disk=${join(dir.path, 'disk.img')}`,
      '--store',
      join(dir.path, 'store.img'),
      '--control',
      control,
      '--chunk-size',
      '64K',
      `--metrics=127.0.0.1:${metricsPort}`,
    ]);
  });

  afterAll(async () => {
    await stopQuietly(srv);
    dir.cleanup();
  });

  it('starts with every export and store figure present, at zero', async () => {
    const f = await scrape();
    expect(read(f)).toBe(0);
    expect(reads(f)).toBe(0);
    expect(sampleValue(f, 'nbdsnap_requests_in_flight', { export: 'disk' })).toBe(0);
    expect(sampleValue(f, 'nbdsnap_open_connections')).toBe(0);
    expect(sampleValue(f, 'nbdsnap_store_used_bytes')).toBe(0);
    expect(sampleValue(f, 'nbdsnap_store_size_bytes')).toBeGreaterThan(0);
    expect(sampleValue(f, 'nbdsnap_store_free_bytes')).toBeGreaterThan(0);
    expect(sampleValue(f, 'nbdsnap_store_journal_bytes')).toBeGreaterThan(0);
    expect(sampleValue(f, 'nbdsnap_store_failed')).toBe(0);
    expect(sampleValue(f, 'nbdsnap_scrub_running')).toBe(0);
    expect(sampleValue(f, 'nbdsnap_process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(sampleValue(f, 'nbdsnap_process_cpu_seconds_total')).toBeGreaterThan(0);
  });

  it('counts what a connected client has read so far, while it is connected', async () => {
    const before = await scrape();
    const c = await NbdClient.open(srv.uri('disk'));
    try {
      for (let at = 0; at < 4 * MiB; at += MiB) await c.read(at, MiB);
      const mid = await scrape();
      expect(sampleValue(mid, 'nbdsnap_open_connections')).toBe(1);
      expect((read(mid) ?? 0) - (read(before) ?? 0)).toBe(4 * MiB);
      expect((reads(mid) ?? 0) - (reads(before) ?? 0)).toBe(4);
      const count = 'nbdsnap_request_duration_seconds_count';
      expect(sampleValue(mid, count, { export: 'disk', command: 'read' })).toBe(reads(mid));
    } finally {
      await c.close();
    }
  });

  it('counts exactly what nbdcopy reads, scraped all along its run', async () => {
    const before = await scrape();
    const accepted = sampleValue(before, 'nbdsnap_accepted_connections_total') ?? 0;
    // One connection, no extents (every byte is read), 1 MiB requests: 64 READs of 1 MiB.
    const copy = background('nbdcopy', [
      '--no-extents',
      '--connections=1',
      '--request-size=1048576',
      srv.uri('disk'),
      'null:',
    ]);
    let done: number | string | undefined;
    void copy.exited.then((c) => {
      done = c;
    });
    let last = read(before) ?? 0;
    let scrapes = 0;
    while (done === undefined) {
      const f = await scrape(); // parses, or the test fails
      const now = read(f) ?? 0;
      expect(now).toBeGreaterThanOrEqual(last); // a counter never goes back
      expect(now - (read(before) ?? 0)).toBeLessThanOrEqual(SIZE);
      last = now;
      scrapes += 1;
      await sleep(20);
    }
    expect(done, copy.output()).toBe(0);
    expect(scrapes).toBeGreaterThan(0);
    const after = await scrape();
    expect((read(after) ?? 0) - (read(before) ?? 0)).toBe(SIZE);
    expect((reads(after) ?? 0) - (reads(before) ?? 0)).toBe(SIZE / MiB);
    expect(sampleValue(after, 'nbdsnap_accepted_connections_total')).toBe(accepted + 1);
    expect(sampleValue(after, 'nbdsnap_requests_in_flight', { export: 'disk' })).toBe(0);
    expect(sampleValue(after, 'nbdsnap_request_errors_total', { export: 'disk', errno: 'EIO' })).toBeUndefined();
  });

  it('counts one copy-on-write copy after the first write under a snapshot, none after the second', async () => {
    ok(await nbdsnap(['snapshot', 'create', 'disk', 'before', '--control', control]), 'snapshot create');
    const before = await scrape();
    expect(sampleValue(before, 'nbdsnap_cow_copies_total', { device: 'disk' })).toBeUndefined();
    expect(sampleValue(before, 'nbdsnap_snapshots', { device: 'disk', state: 'valid' })).toBe(1);
    expect(sampleValue(before, 'nbdsnap_events_total', { type: 'snapshot-created' })).toBe(1);
    expect(sampleValue(before, 'nbdsnap_read_bytes_total', { export: 'disk@before' })).toBe(0);
    // Two 4 KiB writes into the same 64 KiB chunk: the first copies it, the second finds it copied.
    await nbdsh(`h.pwrite(b'x' * 4096, 0)\nh.pwrite(b'y' * 4096, 8192)`, srv.uri('disk'));
    const after = await scrape();
    expect(sampleValue(after, 'nbdsnap_cow_copies_total', { device: 'disk' })).toBe(1);
    expect(sampleValue(after, 'nbdsnap_cow_copied_bytes_total', { device: 'disk' })).toBe(CHUNK);
    expect(sampleValue(after, 'nbdsnap_cow_copy_duration_seconds_count', { device: 'disk' })).toBe(1);
    expect(sampleValue(after, 'nbdsnap_store_used_bytes')).toBe(CHUNK);
    const written = (f: Map<string, Family>) => sampleValue(f, 'nbdsnap_written_bytes_total', { export: 'disk' }) ?? 0;
    expect(written(after) - written(before)).toBe(8192);
  });

  it('counts errors by errno on the export that answered them', async () => {
    // A write to a read-only snapshot export, sent anyway (libnbd's own checks off): EPERM.
    const out = await nbdsh(
      `h.set_strict_mode(0)\nout['w'] = attempt(h.pwrite, b'z' * 512, 0)`,
      srv.uri('disk@before'),
    );
    expect(out.w).toBe('EPERM');
    const f = await scrape();
    expect(sampleValue(f, 'nbdsnap_request_errors_total', { export: 'disk@before', errno: 'EPERM' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_requests_total', { export: 'disk@before', command: 'write' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_written_bytes_total', { export: 'disk@before' })).toBe(0);
  });

  it('counts a scrub and its copies', async () => {
    ok(await nbdsnap(['store', 'scrub', '--control', control]), 'store scrub');
    const f = await scrape();
    expect(sampleValue(f, 'nbdsnap_scrubs_total')).toBe(1);
    expect(sampleValue(f, 'nbdsnap_scrub_running')).toBe(0);
    expect(sampleValue(f, 'nbdsnap_scrub_checked_copies')).toBe(1);
    expect(sampleValue(f, 'nbdsnap_scrub_copies')).toBe(1);
    expect(sampleValue(f, 'nbdsnap_scrub_damaged_copies')).toBe(0);
  });

  it("counts a merge by its events, and the merged snapshot's series go", async () => {
    ok(await nbdsnap(['merge', 'disk@before', '--wait', '--control', control]), 'merge --wait');
    const f = await scrape();
    expect(sampleValue(f, 'nbdsnap_events_total', { type: 'merge-started' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_events_total', { type: 'merge-finished' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_snapshots', { device: 'disk', state: 'valid' })).toBeUndefined();
    expect(sampleValue(f, 'nbdsnap_merge_state', { snapshot: 'disk@before', state: 'merging' })).toBeUndefined();
    expect(sampleValue(f, 'nbdsnap_read_bytes_total', { export: 'disk@before' })).toBeUndefined();
    expect(sampleValue(f, 'nbdsnap_store_used_bytes')).toBe(0);
  });

  it('serves /metrics only', async () => {
    expect((await fetch(`http://127.0.0.1:${metricsPort}/`)).status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { method: 'POST' })).status).toBe(404);
  });
});

describe('--metrics refused', () => {
  it('is a usage error when it is not ADDR:PORT', async () => {
    const r = await nbdsnap(['serve', 'disk=memory:1M', '--metrics', 'nowhere']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toBe('nbdsnap: error: --metrics "nowhere" is not ADDR:PORT (e.g. 127.0.0.1:9100)');
  });

  it('fails the start, with one line, when its port is taken', async () => {
    const port = freshPort();
    const first = await startServer(['a=memory:1M', `--metrics=127.0.0.1:${port}`]);
    try {
      const r = await nbdsnap(['serve', 'b=memory:1M', '-p', String(freshPort()), `--metrics=127.0.0.1:${port}`]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n').at(-1)).toBe(
        `nbdsnap: error: cannot listen on 127.0.0.1:${port} (--metrics): address already in use`,
      );
    } finally {
      await stopQuietly(first);
    }
  });
});
