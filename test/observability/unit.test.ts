/**
 * The pure parts of observability, without a server: latency buckets, per-export accounting,
 * the families' exposition (read through a strict parser), the metrics address, the text log form.
 */
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { formatText } from '../../src/log-text.ts';
import { parseMetricsAddress } from '../../src/metrics/endpoint.ts';
import { defineFamilies, type Sources } from '../../src/metrics/families.ts';
import { Buckets, CopyStats, ExportStats } from '../../src/metrics/stats.ts';
import { Command, NbdError } from '../../src/nbd-protocol/index.ts';
import { parseExposition, sampleValue } from './exposition.ts';

describe('Buckets', () => {
  it('counts each observation in the first bucket whose bound holds it, bounds inclusive', () => {
    const b = new Buckets([0.001, 0.01, 0.1]);
    for (const v of [0.0005, 0.001, 0.002, 0.01, 0.05, 5]) b.observe(v);
    expect([...b.counts]).toEqual([2, 2, 1, 1]);
    expect(b.cumulative()).toEqual([2, 4, 5, 6]);
    expect(b.count).toBe(6);
    expect(b.sum).toBeCloseTo(5.0635, 10);
  });
});

describe('ExportStats', () => {
  it('counts bytes of successful reads and writes only, errors by errno, and what is in flight', () => {
    const s = new ExportStats();
    const a = s.begin();
    const b = s.begin();
    expect(s.inFlight).toBe(2);
    s.end(Command.READ, 4096, 0, a);
    s.end(Command.READ, 512, NbdError.EIO, b);
    s.end(Command.WRITE, 8192, 0, s.begin());
    s.end(Command.WRITE, 100, NbdError.EPERM, s.begin());
    s.end(Command.WRITE_ZEROES, 1 << 20, 0, s.begin());
    s.end(0x77, 0, NbdError.EINVAL, s.begin());
    s.refused(Command.FLUSH, NbdError.ESHUTDOWN);
    expect(s.inFlight).toBe(0);
    expect(s.readBytes).toBe(4096);
    expect(s.writtenBytes).toBe(8192);
    expect([...s.requests]).toEqual([2, 2, 0, 1, 0, 0, 1, 0, 1]);
    expect(Object.fromEntries(s.errors)).toEqual({
      [NbdError.EIO]: 1,
      [NbdError.EPERM]: 1,
      [NbdError.EINVAL]: 1,
      [NbdError.ESHUTDOWN]: 1,
    });
    expect(s.latency[Command.READ]?.count).toBe(2);
    expect(s.latency[Command.FLUSH]).toBeUndefined(); // refused: not run, no latency
  });
});

function fakeSources(): { sources: Sources; disk: ExportStats } {
  const disk = new ExportStats();
  disk.end(Command.READ, 65536, 0, disk.begin());
  disk.end(Command.WRITE, 4096, NbdError.ENOSPC, disk.begin());
  disk.begin(); // one in flight
  const copies = new CopyStats();
  copies.copies = 3;
  copies.bytes = 3 * 65536;
  copies.latency.observe(0.002);
  const sources: Sources = {
    exports: () => [
      ['disk', disk],
      ['disk@a "quoted"\\name', new ExportStats()],
    ],
    copies: () => [['disk', copies]],
    connections: () => ({ open: 2, accepted: 7, budget: { used: 4096, limit: 65536, waiting: 1 } }),
    store: () => ({ totalBytes: 1000, usedBytes: 300, freeBytes: 600, journalBytes: 100, failed: false }),
    snapshots: () => [
      { device: 'disk', state: 'valid' },
      { device: 'disk', state: 'valid' },
      { device: 'disk', state: 'invalid' },
    ],
    merges: () => [{ snapshot: 'disk@m', state: 'merging', mergedBytes: 25, totalBytes: 100 }],
    scrub: () => ({ running: true, checked: 1, total: 4, damaged: 0, finished: 2 }),
    events: () => [['snapshot-created', 5]],
  };
  return { sources, disk };
}

describe('metric families', () => {
  it('expose every figure under a valid name, and the exposition parses', async () => {
    const registry = new Registry();
    const { sources, disk } = fakeSources();
    defineFamilies(registry, sources);
    const f = parseExposition(await registry.metrics());
    expect(sampleValue(f, 'nbdsnap_requests_total', { export: 'disk', command: 'read' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_requests_total', { export: 'disk', command: 'write' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_requests_total', { export: 'disk', command: 'disc' })).toBeUndefined();
    expect(sampleValue(f, 'nbdsnap_request_errors_total', { export: 'disk', errno: 'ENOSPC' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_read_bytes_total', { export: 'disk' })).toBe(65536);
    expect(sampleValue(f, 'nbdsnap_written_bytes_total', { export: 'disk' })).toBe(0);
    expect(sampleValue(f, 'nbdsnap_read_bytes_total', { export: 'disk@a "quoted"\\name' })).toBe(0);
    expect(sampleValue(f, 'nbdsnap_requests_in_flight', { export: 'disk' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_request_duration_seconds_count', { export: 'disk', command: 'read' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_open_connections')).toBe(2);
    expect(sampleValue(f, 'nbdsnap_accepted_connections_total')).toBe(7);
    expect(sampleValue(f, 'nbdsnap_buffered_bytes')).toBe(4096);
    expect(sampleValue(f, 'nbdsnap_buffer_limit_bytes')).toBe(65536);
    expect(sampleValue(f, 'nbdsnap_buffer_waiting_connections')).toBe(1);
    expect(sampleValue(f, 'nbdsnap_cow_copies_total', { device: 'disk' })).toBe(3);
    expect(sampleValue(f, 'nbdsnap_cow_copied_bytes_total', { device: 'disk' })).toBe(3 * 65536);
    expect(sampleValue(f, 'nbdsnap_cow_copy_duration_seconds_bucket', { device: 'disk', le: '0.0025' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_cow_copy_duration_seconds_bucket', { device: 'disk', le: '0.001' })).toBe(0);
    expect(sampleValue(f, 'nbdsnap_store_used_bytes')).toBe(300);
    expect(sampleValue(f, 'nbdsnap_store_free_bytes')).toBe(600);
    expect(sampleValue(f, 'nbdsnap_store_journal_bytes')).toBe(100);
    expect(sampleValue(f, 'nbdsnap_store_size_bytes')).toBe(1000);
    expect(sampleValue(f, 'nbdsnap_snapshots', { device: 'disk', state: 'valid' })).toBe(2);
    expect(sampleValue(f, 'nbdsnap_merge_progress_ratio', { snapshot: 'disk@m' })).toBe(0.25);
    expect(sampleValue(f, 'nbdsnap_merge_state', { snapshot: 'disk@m', state: 'merging' })).toBe(1);
    expect(sampleValue(f, 'nbdsnap_scrub_progress_ratio')).toBe(0.25);
    expect(sampleValue(f, 'nbdsnap_scrubs_total')).toBe(2);
    expect(sampleValue(f, 'nbdsnap_events_total', { type: 'snapshot-created' })).toBe(5);
    for (const name of f.keys()) expect(name).toMatch(/^nbdsnap_/);
    // Figures are read at each scrape: a later change shows in the next one.
    disk.end(Command.READ, 512, 0, disk.begin());
    const again = parseExposition(await registry.metrics());
    expect(sampleValue(again, 'nbdsnap_read_bytes_total', { export: 'disk' })).toBe(65536 + 512);
    expect(sampleValue(again, 'nbdsnap_request_duration_seconds_count', { export: 'disk', command: 'read' })).toBe(2);
  });

  it('the strict reader refuses what Prometheus would', () => {
    expect(() => parseExposition('x_total 1\n')).toThrow(/before its TYPE/);
    expect(() => parseExposition('# TYPE x counter\nx 1\n')).toThrow(/_total/);
    expect(() => parseExposition('# TYPE x_total counter\nx_total{a="1} 1\n')).toThrow(/labels/);
    expect(() => parseExposition('# TYPE g gauge\ng 1\ng 2\n')).toThrow(/twice/);
    const hist = (inf: number) =>
      `# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} ${inf}\nh_sum 1\nh_count 3\n`;
    expect(() => parseExposition(hist(3))).not.toThrow();
    expect(() => parseExposition(hist(1))).toThrow(/cumulative|count/);
  });
});

describe('parseMetricsAddress', () => {
  it('takes ADDR:PORT, [IPV6]:PORT, or a port alone (loopback)', () => {
    expect(parseMetricsAddress('127.0.0.1:9100')).toEqual({ host: '127.0.0.1', port: 9100 });
    expect(parseMetricsAddress('0.0.0.0:9100')).toEqual({ host: '0.0.0.0', port: 9100 });
    expect(parseMetricsAddress('[::1]:9100')).toEqual({ host: '::1', port: 9100 });
    expect(parseMetricsAddress('localhost:0')).toEqual({ host: 'localhost', port: 0 });
    expect(parseMetricsAddress('9100')).toEqual({ host: '127.0.0.1', port: 9100 });
  });

  it('refuses anything else with one line naming the option', () => {
    for (const bad of ['', ':9100', '127.0.0.1', '127.0.0.1:', '::1:9100', 'host:99999', 'host:12x', '[::1]']) {
      expect(() => parseMetricsAddress(bad), bad).toThrow(/^--metrics ".*" is not ADDR:PORT/);
    }
  });
});

describe('formatText', () => {
  it('puts time of day, level and message first, then the fields as key=value', () => {
    const line = JSON.stringify({
      level: 'info',
      time: '2026-12-01T14:46:20.123Z',
      conn: 3,
      peer: '127.0.0.1:40000',
      export: 'disk',
      tls: false,
      reason: 'two words',
      contexts: ['base:allocation'],
      msg: 'connected',
    });
    expect(formatText(`${line}\n`)).toBe(
      '14:46:20.123 INFO  connected conn=3 peer=127.0.0.1:40000 export=disk tls=false reason="two words" contexts=["base:allocation"]\n',
    );
  });

  it('colours the level only when asked, and keeps a line that is not JSON', () => {
    const line = JSON.stringify({ level: 'error', time: '2026-12-01T00:00:00.000Z', msg: 'x' });
    expect(formatText(line, true)).toBe('00:00:00.000 \x1b[31mERROR\x1b[0m x\n');
    expect(formatText('plain text')).toBe('plain text\n');
  });
});
