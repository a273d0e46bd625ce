/**
 * The hooks the data path calls, all optional: unset (no `--metrics`), each call site costs one
 * property test. Set by metrics.ts while a metrics endpoint is served. Kept free of prom-client so
 * that the server, snapshot and store code can import it cheaply.
 */
import type { ScrubProgress } from '../snapshot/damage.ts';
import type { ExportStats } from './stats.ts';

export interface Probes {
  /** The figures of one export; looked up once per connection, when it attaches. */
  exportStats?: ((name: string) => ExportStats) | undefined;
  /** A copy-on-write copy of `bytes` of `device` was made durable; `started` from performance.now(). */
  cowCopied?: ((device: string, bytes: number, started: number) => void) | undefined;
  /** A store scrub reported progress, or ended (`undefined`). */
  scrub?: ((progress: ScrubProgress | undefined) => void) | undefined;
}

export const probes: Probes = {};
