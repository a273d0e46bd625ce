/**
 * `nbdsnap serve --metrics=ADDR:PORT`: the figures of one server, kept while it runs and served
 * to Prometheus. Starting it sets the data-path probes (probes.ts); the store, snapshot, merge and
 * scrub figures are read from the snapshot manager at scrape time. `close()` unsets the probes
 * and stops the endpoint.
 */
import { Registry } from 'prom-client';
import type { Logger } from '../log.ts';
import type { ExportRegistry } from '../server/exports.ts';
import type { SnapshotManager } from '../snapshot/manager.ts';
import { type MetricsEndpoint, parseMetricsAddress, serveMetrics } from './endpoint.ts';
import { defineFamilies, type MergeFigures, type ScrubFigures, type Sources } from './families.ts';
import { probes } from './probes.ts';
import { defineProcessFamilies } from './process.ts';
import { CopyStats, ExportStats } from './stats.ts';

/** What the metrics read from the NBD server (NbdServer has both). */
export interface ConnectionCounts {
  readonly connectionCount: number;
  readonly acceptedCount: number;
  /** The memory budget the connections share (NbdServer's). */
  readonly budget?: { readonly used: number; readonly limit: number; readonly waiting: number };
}

export interface MetricsParts {
  manager: SnapshotManager;
  exports: ExportRegistry;
  server: ConnectionCounts;
  log: Logger;
}

/** The figures of one server, kept in plain numbers; `sources` reads them for the families. */
export class ServerFigures {
  readonly exportStats = new Map<string, ExportStats>();
  readonly copyStats = new Map<string, CopyStats>();
  readonly eventCounts = new Map<string, number>();
  readonly scrubState: ScrubFigures = { running: false, checked: 0, total: 0, damaged: 0, finished: 0 };
  private readonly parts: Omit<MetricsParts, 'log'>;

  constructor(parts: Omit<MetricsParts, 'log'>) {
    this.parts = parts;
  }

  statsOf(name: string): ExportStats {
    let s = this.exportStats.get(name);
    if (s === undefined) {
      s = new ExportStats();
      this.exportStats.set(name, s);
    }
    return s;
  }

  cowCopied(device: string, bytes: number, started: number): void {
    let c = this.copyStats.get(device);
    if (c === undefined) {
      c = new CopyStats();
      this.copyStats.set(device, c);
    }
    c.copies += 1;
    c.bytes += bytes;
    c.latency.observe((performance.now() - started) / 1000);
  }

  scrubbed(p: { checked: number; total: number; damaged: number } | undefined): void {
    const s = this.scrubState;
    if (p === undefined) {
      s.running = false;
      s.finished += 1;
      return;
    }
    if (!s.running) Object.assign(s, { running: true, checked: 0, total: 0, damaged: 0 });
    Object.assign(s, { checked: p.checked, total: p.total, damaged: p.damaged });
  }

  /**
   * Before each scrape: every export served has its series (at zero until used), and an export
   * withdrawn (a snapshot deleted or merged) drops its series once nothing is in flight on it.
   */
  refresh(): void {
    const served = new Set(this.parts.exports.list().map((e) => e.name));
    for (const name of served) this.statsOf(name);
    for (const [name, s] of this.exportStats) if (!served.has(name) && s.inFlight === 0) this.exportStats.delete(name);
  }

  sources(): Sources {
    const { manager, server } = this.parts;
    return {
      exports: () => this.exportStats,
      copies: () => this.copyStats,
      connections: () => ({
        open: server.connectionCount,
        accepted: server.acceptedCount,
        budget: server.budget,
      }),
      store: () => {
        const store = manager.store;
        if (store === undefined) return undefined;
        const s = store.status();
        return { ...s, failed: store.failure !== undefined };
      },
      snapshots: () => manager.catalog.bySeq().map((s) => ({ device: s.origin.name, state: s.state })),
      merges: () => mergeFigures(manager),
      scrub: () => this.scrubState,
      events: () => this.eventCounts,
    };
  }
}

function mergeFigures(manager: SnapshotManager): MergeFigures[] {
  const chunkSize = manager.store?.chunkSize ?? 0;
  return manager.mergeStatus().map((m) => {
    const merged = 'merged' in m && typeof m.merged === 'number' ? m.merged : 0;
    const total = 'total' in m && typeof m.total === 'number' ? m.total : 0;
    const state = m.state.startsWith('scheduled') ? 'scheduled' : m.state;
    return { snapshot: m.snapshot, state, mergedBytes: merged * chunkSize, totalBytes: total * chunkSize };
  });
}

export interface Metrics {
  readonly url: string;
  readonly figures: ServerFigures;
  /** One exposition, as a scrape gets it. */
  scrape(): Promise<string>;
  close(): Promise<void>;
}

/** Serve the metrics of this server at `spec` (ADDR:PORT) and set the data-path probes. */
export async function startMetrics(spec: string, parts: MetricsParts): Promise<Metrics> {
  const at = parseMetricsAddress(spec);
  const figures = new ServerFigures(parts);
  const registry = new Registry();
  defineProcessFamilies(registry);
  defineFamilies(registry, figures.sources());
  const scrape = () => {
    figures.refresh();
    return registry.metrics();
  };
  const endpoint: MetricsEndpoint = await serveMetrics(at, registry.contentType, scrape);
  const unsubscribe = parts.manager.events.subscribe((e) => {
    figures.eventCounts.set(e.type, (figures.eventCounts.get(e.type) ?? 0) + 1);
  });
  probes.exportStats = (name) => figures.statsOf(name);
  probes.cowCopied = (device, bytes, started) => figures.cowCopied(device, bytes, started);
  probes.scrub = (p) => figures.scrubbed(p);
  parts.log.info('metrics', { on: endpoint.url });
  return {
    url: endpoint.url,
    figures,
    scrape,
    async close() {
      probes.exportStats = undefined;
      probes.cowCopied = undefined;
      probes.scrub = undefined;
      unsubscribe();
      await endpoint.close();
    },
  };
}
