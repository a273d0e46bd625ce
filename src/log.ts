/**
 * Structured logging through pino: one JSON object per line on stderr (stdout stays free for URIs
 * and machine-readable output), or the same records as readable text lines (`--log-format=text`,
 * log-text.ts). `child()` adds fields, e.g. one logger per connection. Levels:
 * error < warn < info < debug < trace; request detail is logged at debug only.
 *
 * The Logger class is a thin wrapper that keeps the project's call shape, `log.info(msg, fields)`,
 * over pino's `info(fields, msg)`. A JSON line reads
 *   {"level":"info","time":"2026-12-01T14:46:20.123Z","conn":1,"peer":"127.0.0.1:40000",...,"msg":"connected"}
 * Writes are synchronous, so nothing is lost when the process exits right after a line.
 */
import pino, { type DestinationStream, type Logger as PinoLogger } from 'pino';
import { formatText } from './log-text.ts';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
export const LOG_LEVELS: LogLevel[] = ['silent', 'error', 'warn', 'info', 'debug', 'trace'];

export type LogFormat = 'json' | 'text';
export const LOG_FORMATS: LogFormat[] = ['json', 'text'];

export interface LoggerOptions {
  /** `json` (default) or `text`. */
  format?: LogFormat | undefined;
  /** Where finished lines go (each ends with a newline); stderr by default. */
  sink?: ((line: string) => void) | undefined;
}

function destination(opts: LoggerOptions): DestinationStream {
  const format = opts.format ?? 'json';
  if (opts.sink === undefined && format === 'json') return pino.destination({ dest: 2, sync: true });
  const sink = opts.sink ?? ((line: string) => process.stderr.write(line));
  if (format === 'json') return { write: sink };
  const color = opts.sink === undefined && process.stderr.isTTY === true && process.env.NO_COLOR === undefined;
  return { write: (line: string) => sink(formatText(line, color)) };
}

export class Logger {
  private readonly pino: PinoLogger;

  constructor(level: LogLevel = 'info', opts: LoggerOptions | PinoLogger = {}) {
    this.pino =
      'child' in opts
        ? opts
        : pino(
            {
              level,
              base: null,
              timestamp: pino.stdTimeFunctions.isoTime,
              formatters: { level: (label) => ({ level: label }) },
            },
            destination(opts),
          );
  }

  child(fields: Record<string, unknown>): Logger {
    return new Logger('info', this.pino.child(fields));
  }

  enabled(level: LogLevel): boolean {
    return level !== 'silent' && this.pino.isLevelEnabled(level);
  }

  error(msg: string, extra?: Record<string, unknown>): void {
    this.pino.error(extra, msg);
  }
  warn(msg: string, extra?: Record<string, unknown>): void {
    this.pino.warn(extra, msg);
  }
  info(msg: string, extra?: Record<string, unknown>): void {
    this.pino.info(extra, msg);
  }
  debug(msg: string, extra?: Record<string, unknown>): void {
    this.pino.debug(extra, msg);
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
