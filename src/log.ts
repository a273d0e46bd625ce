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

// errorText lives in a module of its own, without pino, so that the command line can load it cheaply.
export { errorText } from './error-text.ts';
