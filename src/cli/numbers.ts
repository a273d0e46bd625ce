/**
 * Numbers on the command line that yargs leaves as strings: sizes ("64M"), TCP ports,
 * percentages. Each failure is an NbdsnapError('BAD_ARGUMENT') whose message is the one line the
 * user sees. Apart from args.ts (image specs) so that the commands that only need a size load no
 * NBD client code.
 */
import { NbdsnapError } from '../errors.ts';

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** "4096", "64K", "64M", "1G", "1GiB" -> bytes. */
export function parseSize(text: string, what = 'size'): number {
  const m = /^(\d+)\s*([KMGT]?)(i?B)?$/i.exec(text.trim());
  const unit = UNITS[(m?.[2] ?? '').toUpperCase()];
  if (m === null || unit === undefined) {
    throw new NbdsnapError('BAD_ARGUMENT', `${what} "${text}" is not a size (e.g. 4096, 64K, 64M, 1G)`);
  }
  const n = Number(m[1]) * unit;
  if (!Number.isSafeInteger(n)) throw new NbdsnapError('BAD_ARGUMENT', `${what} "${text}" is too large`);
  return n;
}

export function parsePort(value: unknown): number {
  const n = typeof value === 'number' || (typeof value === 'string' && /^\s*\d+\s*$/.test(value)) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    throw new NbdsnapError('BAD_ARGUMENT', `port "${String(value)}" is not a TCP port (0-65535)`);
  }
  return n;
}

/** A percentage from 0 to 100 (e.g. --low-space). */
export function parsePercent(value: unknown, what: string): number {
  const n = typeof value === 'number' ? value : Number(value);
  if (typeof value === 'boolean' || !Number.isFinite(n) || n < 0 || n > 100) {
    const given = typeof value === 'number' && Number.isNaN(value) ? '' : ` "${String(value)}"`;
    throw new NbdsnapError('BAD_ARGUMENT', `${what}${given} must be a percentage from 0 to 100`);
  }
  return n;
}
