#!/usr/bin/env node
// bench-report.mjs: the tables of scripts/bench.sh, from its raw results.
//
//   node scripts/bench-report.mjs RESULTS.tsv RATIOS.tsv [JSON_OUT] [CONFIG]
//
// RESULTS.tsv: rep, server, workload, metric, value, unit, better (hi|lo), target, table — one
// line per measurement. Table "io" is printed as before (nbdsnap vs nbdkit, ratio, target, cpu%);
// every other table (a section: snapshot, merge, backup) as one column per server, with the
// ratio nbdsnap / each other server. RATIOS.tsv: label, numerator, denominator, target, note —
// NUM and DEN are TABLE/SERVER/METRIC, whose medians are divided. Medians over repetitions.
import { readFileSync, writeFileSync } from 'node:fs';

const [rawPath, ratiosPath, jsonOut, config = ''] = process.argv.slice(2);
const lines = (path) =>
  readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => l.split('\t'));

const rows = lines(rawPath).map(([rep, server, workload, metric, value, unit, better, target, table]) => ({
  rep: Number(rep),
  server,
  workload,
  metric,
  value: value === '' ? Number.NaN : Number(value),
  unit,
  better,
  target,
  table: table || 'io',
}));
const declared = lines(ratiosPath).map(([label, num, den, target, note]) => ({ label, num, den, target, note }));

const push = (obj, key, v) => {
  if (obj[key] === undefined) obj[key] = [];
  obj[key].push(v);
};
const median = (xs) => {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
const f = (v, d) => (v === null || v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(d));
const digits = (v) => (v === null ? 0 : Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2);
const check = (target, x) => {
  const t = /^(ratio|snap)([<>]=?)([\d.]+)$/.exec(target ?? '');
  if (!t || x === null || !Number.isFinite(x)) return null;
  const y = Number(t[3]);
  return { '<': x < y, '<=': x <= y, '>': x > y, '>=': x >= y }[t[2]];
};

/** Print rows of cells as an aligned table; columns listed in `right` are right-aligned. */
function printTable(head, body, right) {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((l) => l[i].length)));
  const out = (cells) =>
    cells
      .map((c, i) => (right.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i])))
      .join(' | ')
      .trimEnd();
  console.log(out(head));
  console.log(widths.map((w) => '-'.repeat(w)).join('-|-'));
  for (const l of body) console.log(out(l));
}

// ------------------------------------------------------------------ table io: nbdsnap vs nbdkit
const ioMetrics = new Map(); // metric -> { workload, unit, better, target, values: { server: [] } }
for (const r of rows.filter((x) => x.table === 'io')) {
  if (!ioMetrics.has(r.metric)) ioMetrics.set(r.metric, { ...r, values: {} });
  push(ioMetrics.get(r.metric).values, r.server, r.value);
}
const table = [];
for (const [metric, m] of ioMetrics) {
  if (metric.startsWith('cpu:')) continue;
  const snap = median(m.values.nbdsnap ?? []);
  const kit = median(m.values.nbdkit ?? []);
  const ratio = snap !== null && kit !== null && kit !== 0 ? snap / kit : null;
  const cpu = ioMetrics.get(`cpu:${m.workload}`);
  const x = m.target.startsWith('ratio') ? ratio : snap;
  table.push({
    workload: m.workload,
    metric,
    unit: m.unit,
    better: m.better === 'hi' ? 'higher' : 'lower',
    nbdsnap: snap,
    nbdkit: kit,
    ratio,
    target: m.target === '-' ? null : m.target,
    pass: check(m.target, x),
    nbdsnap_runs: m.values.nbdsnap ?? [],
    nbdkit_runs: m.values.nbdkit ?? [],
    nbdsnap_cpu_pct: cpu ? median(cpu.values.nbdsnap ?? []) : null,
    nbdkit_cpu_pct: cpu ? median(cpu.values.nbdkit ?? []) : null,
  });
}
const d0 = (v) => (v === null ? 0 : Math.abs(v) >= 100 ? 0 : 1);
if (table.length > 0) {
  console.log(`\nnbdsnap vs nbdkit file: ${config}`);
  console.log('ratio = nbdsnap / nbdkit (medians); MiB/s and IOPS: higher is better; us, MiB, s: lower is better');
  console.log('cpu% = server CPU time / wall time of the workload (100 = one core)\n');
  printTable(
    ['metric', 'unit', 'nbdsnap', 'nbdkit', 'ratio', 'target', 'ok', 'cpu% snap/kit', 'runs nbdsnap | nbdkit'],
    table.map((r) => [
      r.metric,
      r.unit,
      f(r.nbdsnap, d0(r.nbdsnap)),
      f(r.nbdkit, d0(r.nbdkit)),
      f(r.ratio, 2),
      r.target ?? '',
      r.pass === null ? '' : r.pass ? 'yes' : 'NO',
      r.nbdsnap_cpu_pct === null && r.nbdkit_cpu_pct === null
        ? ''
        : `${f(r.nbdsnap_cpu_pct, 0)}/${f(r.nbdkit_cpu_pct, 0)}`,
      `${r.nbdsnap_runs.map((v) => f(v, d0(v))).join(' ')} | ${r.nbdkit_runs.map((v) => f(v, d0(v))).join(' ')}`,
    ]),
    new Set([2, 3, 4, 5, 6]),
  );
} else {
  console.log(`\nnbdsnap benchmark: ${config}`);
}

// ------------------------------------------------------------------ section tables
const TITLES = {
  snapshot: [
    'snapshot: nbdsnap with one snapshot held (store + control, 64K chunks, change tracking on) vs qemu-nbd serving',
    'a qcow2 overlay of the image (qcow2) vs nbdkit --filter=cow file (nbdkit-cow); 64 KiB chunk / cluster / block.',
    ' write_4k_first: one 4 KiB write in every 64 KiB chunk, random order, QD32 (fio iolog replay: one pass, every',
    ' write the first to its chunk, on a fresh snapshot / overlay); write_1M_first: one sequential pass of 1 MiB QD16',
    ' (capped at the runtime). write_*_plain (no snapshot; median of a run before and one after the snapshot',
    ' workloads) and write_*_over (every chunk already copied): random 4 KiB QD32 / sequential 1 MiB QD16, time based.',
    ' read_*_origin: the origin with the snapshot held; read_*_snap_shared: the snapshot export (qcow2, nbdkit-cow:',
    ' the overlay) before any copy (reads through to the origin / backing file); read_*_snap_copied: after every',
    ' chunk was copied (nbdsnap: from the store; qcow2, nbdkit-cow: from the overlay). 4k: random QD32; 1M: seq QD16.',
    ' nbdsnap makes each copy durable (fdatasync of the data, then of the journal) before the origin write; qemu-nbd',
    ' (cache=writeback) and the cow filter (overlay in a temporary file) sync nothing unless the client flushes.',
  ],
  merge: [
    'merge: roll the origin back to a snapshot holding N MiB of changed chunks (merge.start, timed until the merge',
    ' is gone, polling every 10 ms) vs nbdcopy of N MiB between two plain exports of the same server; origin 4 KiB',
    ' random reads QD32 idle (snapshot held, merge not started) vs while a merge of N MiB runs (fio IOPS log).',
  ],
  scale: [
    'scale: a 15 TiB sparse origin (BENCH_SCALE_SIZE), 64 KiB chunks, 6 snapshots s1..s6, 20,000 scattered 4 KiB first',
    ' writes spread over the eras. map_*: `nbdinfo --map` time: the origin (base:allocation, the baseline); s1 (reads',
    ' every copy) in base:allocation and qemu:allocation-depth; s6 in qemu:dirty-bitmap:s1. journal_*: `store status`',
    ' journalBytes after 1 and after 10 cycles of (snapshot, 2,000 first writes to the same chunks, delete): the live',
    ' state is the same after both. peak_rss_VmHWM: the server over the whole section. restart_* and',
    ' heap_per_copied_chunk: scripts/restart-scale.ts and scripts/extable-scale.ts (1,000,000 copies), "-" if absent.',
  ],
  backup: [
    'backup: incremental `nbdsnap backup --since A` of snapshot B after scattered 64 KiB writes vs a full',
    ' `nbdcopy` of B to a file. sent = bytes the server wrote to its sockets (/proc/PID/io wchar delta), i.e. the',
    ' bytes the client read. cbt: 4 KiB writes QD32, one to every 64 KiB block in random order, in a fresh',
    ' change-tracking era (snapshot taken and deleted just before), --cbt-block-size 64K vs 0.',
  ],
  cluster: [
    'cluster: a single-node Ceph (scripts/ceph-cluster.sh). nbdsnap serving an RBD image through qemu-nbd',
    ' (bench=nbd://..., local store, no snapshot held) vs fio talking to the same qemu-nbd directly (qemu-nbd).',
    ' cpu_s_per_GiB_*: CPU seconds of the server the client talks to per GiB moved. backup_*: a full',
    ' `nbdsnap backup` of snapshot B to s3:// (radosgw) and to a local file: MiB/s, peak RSS, CPU s per GiB.',
  ],
};
const sections = {};
const tableNames = [...new Set(rows.map((r) => r.table))].filter((t) => t !== 'io');
for (const name of tableNames) {
  const rs = rows.filter((r) => r.table === name);
  const servers = [...new Set(rs.map((r) => r.server))];
  const metrics = new Map();
  for (const r of rs) {
    if (!metrics.has(r.metric)) metrics.set(r.metric, { unit: r.unit, better: r.better, target: r.target, values: {} });
    push(metrics.get(r.metric).values, r.server, r.value);
  }
  const others = servers.filter((s) => s !== 'nbdsnap');
  const out = [];
  for (const [metric, m] of metrics) {
    const med = Object.fromEntries(servers.map((s) => [s, median(m.values[s] ?? [])]));
    const ratios = Object.fromEntries(
      others.map((s) => [s, med.nbdsnap !== null && med[s] ? med.nbdsnap / med[s] : null]),
    );
    const target = m.target && m.target !== '-' ? m.target : null;
    out.push({
      metric,
      unit: m.unit,
      better: m.better === 'hi' ? 'higher' : 'lower',
      median: med,
      ratios,
      target,
      // "ratio..." targets judge nbdsnap against the first other server, "snap..." its own value
      pass:
        target === null
          ? null
          : check(target, target.startsWith('ratio') ? (ratios[others[0]] ?? null) : (med.nbdsnap ?? null)),
      runs: m.values,
    });
  }
  // a section with targets of its own (absolute ones, "snap<X") shows them beside nbdsnap's value
  const targets = out.some((r) => r.target !== null);
  sections[name] = out;
  console.log('');
  for (const l of TITLES[name] ?? [name]) console.log(l);
  console.log('');
  printTable(
    ['metric', 'unit', ...servers, ...others.map((s) => `snap/${s}`), ...(targets ? ['target', 'ok'] : []), 'runs'],
    out.map((r) => [
      r.metric,
      r.unit,
      ...servers.map((s) => f(r.median[s], digits(r.median[s]))),
      ...others.map((s) => f(r.ratios[s], 2)),
      ...(targets ? [r.target ?? '', r.pass === null ? '' : r.pass ? 'yes' : 'NO'] : []),
      servers
        .filter((s) => (r.runs[s] ?? []).length > 1)
        .map((s) => `${s}: ${r.runs[s].map((v) => f(v, digits(v))).join(' ')}`)
        .join('; '),
    ]),
    new Set(Array.from({ length: servers.length + others.length + (targets ? 2 : 0) }, (_, i) => i + 2)),
  );
}

// ------------------------------------------------------------------ ratios the issues ask for
const value = (ref) => {
  const [t, server, metric] = ref.split('/');
  const rs = rows.filter((r) => r.table === t && r.server === server && r.metric === metric);
  return rs.length === 0 ? null : { v: median(rs.map((r) => r.value)), unit: rs[0].unit };
};
const ratios = declared.map((d) => {
  const n = value(d.num);
  const dd = value(d.den);
  const r = n?.v != null && dd?.v ? n.v / dd.v : null;
  return {
    ...d,
    numerator: n?.v ?? null,
    denominator: dd?.v ?? null,
    numeratorUnit: n?.unit ?? '',
    denominatorUnit: dd?.unit ?? '',
    ratio: r,
    pass: check(d.target, r),
  };
});
if (ratios.length > 0) {
  console.log("\nratios (medians): numerator / denominator; ok = meets the issue's target\n");
  printTable(
    ['ratio', 'value', 'target', 'ok', 'numerator', 'denominator', 'note'],
    ratios.map((r) => [
      r.label,
      f(r.ratio, 2),
      r.target === '-' ? '' : r.target,
      r.pass === null ? '' : r.pass ? 'yes' : 'NO',
      `${f(r.numerator, digits(r.numerator))} ${r.numeratorUnit}`,
      `${f(r.denominator, digits(r.denominator))} ${r.denominatorUnit}`,
      r.note ?? '',
    ]),
    new Set([1, 2, 3, 4, 5]),
  );
}

if (jsonOut) {
  const json = { config, date: new Date().toISOString(), results: table, sections, ratios };
  writeFileSync(jsonOut, `${JSON.stringify(json, null, 2)}\n`);
  console.log(`\nJSON written to ${jsonOut}`);
}
