/**
 * The text form of a log line (`--log-format=text`), for a person at a terminal: pino's JSON
 * record turned into
 *   14:46:20.123 INFO  connected conn=1 peer=127.0.0.1:40000 export=disk tls=false
 * time of day (UTC, as in the JSON), level, message, then every other field as key=value (a value
 * with spaces or quotes JSON-quoted, an object or list as JSON). Pure: one line in, one line out.
 */
const LEVEL_COLORS: Record<string, string> = {
  error: '\x1b[31m',
  warn: '\x1b[33m',
  info: '\x1b[32m',
  debug: '\x1b[36m',
  trace: '\x1b[90m',
};

function value(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  if (typeof v === 'object' && v !== null) return JSON.stringify(v);
  return String(v);
}

/** One JSON log line (ending in a newline) as one text line; a line that is not JSON is kept. */
export function formatText(line: string, color = false): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.endsWith('\n') ? line : `${line}\n`;
  }
  const { time, level, msg, ...fields } = record;
  const clock = typeof time === 'string' ? (/T([\d:.]+)/.exec(time)?.[1] ?? time) : '';
  const name = String(level ?? '').toUpperCase();
  const padded = name.padEnd(5);
  const shown = color ? `${LEVEL_COLORS[String(level)] ?? ''}${padded}\x1b[0m` : padded;
  const rest = Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${value(v)}`);
  return `${[clock, shown, String(msg ?? ''), ...rest].filter((p) => p !== '').join(' ')}\n`;
}
