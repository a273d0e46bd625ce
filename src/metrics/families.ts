/**
 * The metric families, every one read at scrape time from `Sources` (collect callbacks): the data
 * path only adds to plain numbers (stats.ts), the store, merge and scrub figures are asked of the
 * snapshot manager when Prometheus asks. Names follow Prometheus' rules: the `nbdsnap_` prefix,
 * base units as suffixes (`_seconds`, `_bytes`, `_ratio`), `_total` on counters only. README.md
 * lists them all.
 */
import { Counter, Gauge, type Metric, type Registry } from 'prom-client';
import { nbdErrorName } from '../nbd-protocol/index.ts';
import { type Buckets, COMMAND_LABELS, type CopyStats, type ExportStats } from './stats.ts';

export interface StoreFigures {
  totalBytes: number;
  usedBytes: number;
  freeBytes: number;
  journalBytes: number;
  failed: boolean;
}

export interface MergeFigures {
  snapshot: string;
  state: string;
  mergedBytes: number;
  totalBytes: number;
}

export interface ScrubFigures {
  running: boolean;
  checked: number;
  total: number;
  damaged: number;
  finished: number;
}

/** Where the figures come from; each is called once per scrape of its families. */
export interface Sources {
  exports(): Iterable<[string, ExportStats]>;
  copies(): Iterable<[string, CopyStats]>;
  /** Connections, and the memory budget (`--max-buffer`) they share when the server has one. */
  connections(): {
    open: number;
    accepted: number;
    budget?: { used: number; limit: number; waiting: number } | undefined;
  };
  store(): StoreFigures | undefined;
  snapshots(): { device: string; state: string }[];
  merges(): MergeFigures[];
  scrub(): ScrubFigures;
  events(): Iterable<[string, number]>;
}

type Labels = Record<string, string>;
type Emit = (labels: Labels, value: number) => void;

function counter(registry: Registry, name: string, help: string, labelNames: string[], fill: (emit: Emit) => void) {
  new Counter({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      fill((labels, value) => this.inc(labels, value));
    },
  });
}

function gauge(registry: Registry, name: string, help: string, labelNames: string[], fill: (emit: Emit) => void) {
  new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      fill((labels, value) => this.set(labels, value));
    },
  });
}

/**
 * A histogram whose buckets are counted elsewhere (stats.ts `Buckets`) and read at scrape time.
 * prom-client's own Histogram hashes its labels on every observation, so this one hands the
 * registry the same `get()` result a Histogram would, built from the counts.
 */
function histogram(registry: Registry, name: string, help: string, series: () => Iterable<[Labels, Buckets]>): void {
  const family = {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    reset() {},
    async get() {
      const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
      for (const [labels, b] of series()) {
        const cumulative = b.cumulative();
        b.bounds.forEach((le, i) => {
          values.push({ labels: { ...labels, le }, value: cumulative[i] as number, metricName: `${name}_bucket` });
        });
        values.push({ labels: { ...labels, le: '+Inf' }, value: b.count, metricName: `${name}_bucket` });
        values.push({ labels, value: b.sum, metricName: `${name}_sum` });
        values.push({ labels, value: b.count, metricName: `${name}_count` });
      }
      return { name, help, type: 'histogram', values, aggregator: 'sum' };
    },
  };
  registry.registerMetric(family as unknown as Metric);
}

export function defineFamilies(registry: Registry, src: Sources): void {
  /** One series per export, device (copies) or merge, of the figure `pick` reads. */
  const perExport = (pick: (s: ExportStats) => number) => (emit: Emit) => {
    for (const [name, s] of src.exports()) emit({ export: name }, pick(s));
  };
  const perDevice = (pick: (c: CopyStats) => number) => (emit: Emit) => {
    for (const [device, c] of src.copies()) emit({ device }, pick(c));
  };
  const perMerge = (pick: (m: MergeFigures) => number) => (emit: Emit) => {
    for (const m of src.merges()) emit({ snapshot: m.snapshot }, pick(m));
  };

  // Per export.
  counter(
    registry,
    'nbdsnap_requests_total',
    'NBD requests answered, by export and command',
    ['export', 'command'],
    (emit) => {
      for (const [name, s] of src.exports()) {
        s.requests.forEach((n, i) => {
          const command = COMMAND_LABELS[i] as string;
          if (n > 0 || (command !== 'disc' && command !== 'other')) emit({ export: name, command }, n);
        });
      }
    },
  );
  counter(
    registry,
    'nbdsnap_request_errors_total',
    'NBD requests answered with an error, by export and errno',
    ['export', 'errno'],
    (emit) => {
      for (const [name, s] of src.exports())
        for (const [errno, n] of s.errors) emit({ export: name, errno: nbdErrorName(errno) }, n);
    },
  );
  const exportFigures: [typeof counter, string, string, (s: ExportStats) => number][] = [
    [counter, 'nbdsnap_read_bytes_total', 'Bytes read by clients (successful READs)', (s) => s.readBytes],
    [counter, 'nbdsnap_written_bytes_total', 'Bytes written by clients (successful WRITEs)', (s) => s.writtenBytes],
    [gauge, 'nbdsnap_requests_in_flight', 'NBD requests received and not yet answered', (s) => s.inFlight],
  ];
  for (const [kind, name, help, pick] of exportFigures) kind(registry, name, help, ['export'], perExport(pick));
  histogram(
    registry,
    'nbdsnap_request_duration_seconds',
    'Time from a request parsed to its reply queued, by export and command',
    function* () {
      for (const [name, s] of src.exports()) {
        for (const [i, b] of s.latency.entries())
          if (b !== undefined) yield [{ export: name, command: COMMAND_LABELS[i] as string }, b];
      }
    },
  );

  // Connections.
  gauge(registry, 'nbdsnap_open_connections', 'NBD client connections open now', [], (emit) =>
    emit({}, src.connections().open),
  );
  counter(registry, 'nbdsnap_accepted_connections_total', 'NBD client connections accepted', [], (emit) =>
    emit({}, src.connections().accepted),
  );
  const budget: [string, string, (b: { used: number; limit: number; waiting: number }) => number][] = [
    ['nbdsnap_buffered_bytes', 'WRITE payloads and READ replies held in the memory budget now', (b) => b.used],
    ['nbdsnap_buffer_limit_bytes', 'The memory budget of all connections (--max-buffer)', (b) => b.limit],
    ['nbdsnap_buffer_waiting_connections', 'Connections not read until the budget has room', (b) => b.waiting],
  ];
  for (const [name, help, pick] of budget) {
    gauge(registry, name, help, [], (emit) => {
      const b = src.connections().budget;
      if (b !== undefined) emit({}, pick(b));
    });
  }

  // Copy-on-write.
  counter(
    registry,
    'nbdsnap_cow_copies_total',
    'Chunks copied to the store before an origin write, by device',
    ['device'],
    perDevice((c) => c.copies),
  );
  counter(
    registry,
    'nbdsnap_cow_copied_bytes_total',
    'Bytes copied to the store before origin writes, by device',
    ['device'],
    perDevice((c) => c.bytes),
  );
  histogram(
    registry,
    'nbdsnap_cow_copy_duration_seconds',
    'Time to copy one chunk: read, write to the store, durable record',
    function* () {
      for (const [device, c] of src.copies()) yield [{ device }, c.latency];
    },
  );

  // The difference store: one unlabelled gauge per figure.
  const storeGauges: [string, string, (s: StoreFigures) => number][] = [
    ['nbdsnap_store_size_bytes', 'Difference store size, all ranges', (s) => s.totalBytes],
    ['nbdsnap_store_used_bytes', 'Difference store bytes holding copies', (s) => s.usedBytes],
    ['nbdsnap_store_free_bytes', 'Difference store bytes free for copies', (s) => s.freeBytes],
    ['nbdsnap_store_journal_bytes', 'Difference store bytes holding the journal', (s) => s.journalBytes],
    ['nbdsnap_store_failed', '1 when the store refuses commits after a failure', (s) => (s.failed ? 1 : 0)],
  ];
  for (const [name, help, pick] of storeGauges) {
    gauge(registry, name, help, [], (emit) => {
      const s = src.store();
      if (s !== undefined) emit({}, pick(s));
    });
  }
  gauge(
    registry,
    'nbdsnap_snapshots',
    'Snapshots, by device and state (valid, invalid, merging)',
    ['device', 'state'],
    (emit) => {
      const counts = new Map<string, { device: string; state: string; n: number }>();
      for (const { device, state } of src.snapshots()) {
        const key = `${device}\0${state}`;
        const c = counts.get(key) ?? { device, state, n: 0 };
        c.n += 1;
        counts.set(key, c);
      }
      for (const c of counts.values()) emit({ device: c.device, state: c.state }, c.n);
    },
  );

  // Merges.
  const mergeGauges: [string, string, (m: MergeFigures) => number][] = [
    ['nbdsnap_merge_merged_bytes', 'Bytes a merge has copied back, by snapshot', (m) => m.mergedBytes],
    ['nbdsnap_merge_size_bytes', 'Bytes a merge copies back in all, by snapshot', (m) => m.totalBytes],
    [
      'nbdsnap_merge_progress_ratio',
      'Part of a merge done, 0 to 1, by snapshot',
      (m) => (m.totalBytes > 0 ? m.mergedBytes / m.totalBytes : m.state === 'done' ? 1 : 0),
    ],
  ];
  for (const [name, help, pick] of mergeGauges) gauge(registry, name, help, ['snapshot'], perMerge(pick));
  gauge(
    registry,
    'nbdsnap_merge_state',
    'A merge and its state (merging, failed, done, scheduled): always 1',
    ['snapshot', 'state'],
    (emit) => {
      for (const m of src.merges()) emit({ snapshot: m.snapshot, state: m.state }, 1);
    },
  );

  // Scrub (`nbdsnap store scrub`): the one running, else the last one.
  const scrub = (pick: (s: ScrubFigures) => number) => (emit: Emit) => emit({}, pick(src.scrub()));
  const scrubGauges: [string, string, (s: ScrubFigures) => number][] = [
    ['nbdsnap_scrub_running', '1 while a store scrub runs', (s) => (s.running ? 1 : 0)],
    ['nbdsnap_scrub_checked_copies', 'Copies the running (or last) scrub has checked', (s) => s.checked],
    ['nbdsnap_scrub_copies', 'Copies the running (or last) scrub checks in all', (s) => s.total],
    ['nbdsnap_scrub_damaged_copies', 'Damaged copies the running (or last) scrub found', (s) => s.damaged],
    [
      'nbdsnap_scrub_progress_ratio',
      'Part of the running (or last) scrub done, 0 to 1',
      (s) => (s.total > 0 ? s.checked / s.total : s.finished > 0 && !s.running ? 1 : 0),
    ],
  ];
  for (const [name, help, pick] of scrubGauges) gauge(registry, name, help, [], scrub(pick));
  counter(
    registry,
    'nbdsnap_scrubs_total',
    'Store scrubs finished (or failed)',
    [],
    scrub((s) => s.finished),
  );

  // Events (`nbdsnap events`).
  counter(registry, 'nbdsnap_events_total', 'Snapshot and store events raised, by type', ['type'], (emit) => {
    for (const [type, n] of src.events()) emit({ type }, n);
  });
}
