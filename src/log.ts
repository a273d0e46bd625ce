/**
 * Structured logging: one JSON object per line on stderr (stdout stays free for URIs and
 * machine-readable output). `child()` adds fields, e.g. one logger per connection. Levels:
 * error < warn < info < debug < trace; request detail is logged at debug only.
 */
export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
const RANK: Record<LogLevel, number> = { silent: 0, error: 1, warn: 2, info: 3, debug: 4, trace: 5 };

export const LOG_LEVELS = Object.keys(RANK) as LogLevel[];

export class Logger {
  private readonly rank: number;
  private readonly fields: Record<string, unknown>;
  private readonly sink: (line: string) => void;

  constructor(level: LogLevel = 'info', fields: Record<string, unknown> = {}, sink?: (line: string) => void) {
    this.rank = RANK[level];
    this.fields = fields;
    this.sink = sink ?? ((line) => process.stderr.write(line));
  }

  child(fields: Record<string, unknown>): Logger {
    const level = (Object.keys(RANK) as LogLevel[]).find((l) => RANK[l] === this.rank) ?? 'info';
    return new Logger(level, { ...this.fields, ...fields }, this.sink);
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] <= this.rank;
  }

  error(msg: string, extra?: Record<string, unknown>): void {
    this.write('error', msg, extra);
  }
  warn(msg: string, extra?: Record<string, unknown>): void {
    this.write('warn', msg, extra);
  }
  info(msg: string, extra?: Record<string, unknown>): void {
    this.write('info', msg, extra);
  }
  debug(msg: string, extra?: Record<string, unknown>): void {
    this.write('debug', msg, extra);
  }

  private write(level: LogLevel, msg: string, extra?: Record<string, unknown>): void {
    if (RANK[level] > this.rank) return;
    const record = { time: new Date().toISOString(), level, msg, ...this.fields, ...extra };
    this.sink(`${JSON.stringify(record, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}\n`);
  }
}

/** A logger that drops everything (tests, library use). */
export const silentLogger = new Logger('silent');

const SYSCALL_VERBS: Record<string, string> = {
  open: 'cannot open',
  read: 'cannot read',
  write: 'cannot write',
  fsync: 'cannot sync',
  fdatasync: 'cannot sync',
  ftruncate: 'cannot resize',
  unlink: 'cannot remove',
  rename: 'cannot rename',
  mkdir: 'cannot create directory',
  stat: 'cannot stat',
  lstat: 'cannot stat',
  connect: 'cannot connect to',
  listen: 'cannot listen on',
  bind: 'cannot bind',
};

/**
 * An error as the one line a person reads: an NbdsnapError's message as it is; a system error
 * (EPERM, EROFS, ENOENT, ...) as "cannot open PATH: operation not permitted (EPERM)" rather than
 * Node's "EPERM: operation not permitted, open 'PATH'"; anything else by its message. Never a
 * stack, never more than one line.
 */
export function errorText(err: unknown): string {
  const e = err as (Error & { code?: unknown; syscall?: unknown; path?: unknown }) | null;
  let text: string;
  if (e instanceof Error && typeof e.code === 'string' && typeof e.syscall === 'string' && e.name !== 'NbdsnapError') {
    // Node's text is "CODE: description, syscall 'path'"; keep the description.
    const description = /^[A-Z0-9]+: ([^,]*)/.exec(e.message)?.[1] ?? e.message;
    const verb = SYSCALL_VERBS[e.syscall] ?? e.syscall;
    const target = typeof e.path === 'string' ? ` ${e.path}` : '';
    text = `${verb}${target}: ${description} (${e.code})`;
  } else {
    text = e instanceof Error ? e.message : String(err);
  }
  return text.replace(/\s*\n\s*/g, ' ').trim();
}
