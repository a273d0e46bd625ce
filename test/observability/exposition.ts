/**
 * A strict reader of Prometheus' text exposition format (0.0.4), for the tests: every line must
 * be a HELP, a TYPE or a sample of a family whose TYPE came first; names and labels must be
 * valid; no sample twice; counters end in `_total`; every histogram's buckets are cumulative and
 * its +Inf bucket equals its count. Anything else throws, naming the line.
 */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  type: string;
  help: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"/;

/** A float as Prometheus (Go's ParseFloat) reads it: also Inf and NaN in any case (prom-client writes "Nan"). */
function parseValue(text: string, line: string): number {
  if (/^\+?inf(inity)?$/i.test(text)) return Number.POSITIVE_INFINITY;
  if (/^-inf(inity)?$/i.test(text)) return Number.NEGATIVE_INFINITY;
  if (/^nan$/i.test(text)) return Number.NaN;
  const v = Number(text);
  if (text === '' || Number.isNaN(v)) throw new Error(`bad value in: ${line}`);
  return v;
}

function parseLabels(text: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let rest = text;
  while (rest !== '') {
    const m = LABEL.exec(rest);
    if (m === null) throw new Error(`bad labels in: ${line}`);
    const [all, key, value] = m as unknown as [string, string, string];
    if (key in labels) throw new Error(`label ${key} twice in: ${line}`);
    labels[key] = value.replace(/\\(.)/g, (_m, c: string) => (c === 'n' ? '\n' : c));
    rest = rest.slice(all.length);
    if (rest.startsWith(',')) rest = rest.slice(1);
    else if (rest !== '') throw new Error(`bad labels in: ${line}`);
  }
  return labels;
}

const key = (s: Sample) =>
  `${s.name}{${Object.entries(s.labels)
    .sort()
    .map(([k, v]) => `${k}=${v}`)
    .join(',')}}`;

export function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const meta = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
    if (meta !== null) {
      const [, what, name, rest = ''] = meta as unknown as [string, string, string, string | undefined];
      if (!NAME.test(name)) throw new Error(`bad metric name in: ${line}`);
      const f = families.get(name) ?? { name, type: 'untyped', help: '', samples: [] };
      if (what === 'HELP') f.help = rest;
      else if (['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) f.type = rest;
      else throw new Error(`bad type in: ${line}`);
      families.set(name, f);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([^\s{]+)(?:\{(.*)\})? (\S+)(?: -?\d+)?$/.exec(line);
    if (m === null) throw new Error(`not a sample: ${line}`);
    const [, name, labelText = '', valueText] = m as unknown as [string, string, string | undefined, string];
    if (!NAME.test(name)) throw new Error(`bad metric name in: ${line}`);
    const sample = { name, labels: parseLabels(labelText, line), value: parseValue(valueText, line) };
    const base = name.replace(/_(bucket|sum|count)$/, '');
    const family = families.get(name) ?? families.get(base);
    if (family === undefined || family.type === 'untyped') throw new Error(`sample before its TYPE: ${line}`);
    if (family.name !== name && family.type !== 'histogram' && family.type !== 'summary')
      throw new Error(`sample ${name} in a ${family.type} family ${family.name}`);
    if (seen.has(key(sample))) throw new Error(`sample twice: ${line}`);
    seen.add(key(sample));
    family.samples.push(sample);
  }
  for (const f of families.values()) {
    if (f.type === 'counter' && !f.name.endsWith('_total')) throw new Error(`counter ${f.name} does not end in _total`);
    if (f.type === 'histogram') checkHistogram(f);
  }
  return families;
}

function checkHistogram(f: Family): void {
  const series = new Map<string, { buckets: [number, number][]; count?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const id = JSON.stringify(Object.entries(rest).sort());
    const entry = series.get(id) ?? { buckets: [] };
    if (s.name.endsWith('_bucket')) entry.buckets.push([parseValue(le ?? '', `${f.name} le`), s.value]);
    if (s.name.endsWith('_count')) entry.count = s.value;
    series.set(id, entry);
  }
  for (const [id, { buckets, count }] of series) {
    const last = buckets[buckets.length - 1];
    if (last === undefined || last[0] !== Number.POSITIVE_INFINITY)
      throw new Error(`${f.name}${id}: no +Inf bucket last`);
    for (let i = 1; i < buckets.length; i++) {
      const [le, n] = buckets[i] as [number, number];
      const [prevLe, prevN] = buckets[i - 1] as [number, number];
      if (le <= prevLe || n < prevN) throw new Error(`${f.name}${id}: buckets not cumulative`);
    }
    if (last[1] !== count) throw new Error(`${f.name}${id}: +Inf bucket ${last[1]} is not the count ${count}`);
  }
}

/** The value of one sample (labels must match exactly, `le` aside for _bucket), or undefined. */
export function sampleValue(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const base = name.replace(/_(bucket|sum|count)$/, '');
  const f = families.get(name) ?? families.get(base);
  const want = JSON.stringify(Object.entries(labels).sort());
  return f?.samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want)?.value;
}
