/**
 * `nbdsnap verify FILE...`: check a chain without restoring it (every checksum, every end
 * marker, the record rules, the chain's order and ids), and describe each file in one line.
 */
import { type ChainFile, describeSnap, loadChain } from './chain.ts';
import type { Progress } from './progress.ts';

export function verify(files: string[], progress?: Progress): Promise<ChainFile[]> {
  return loadChain(files, progress);
}

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

/** One line about a checked file. */
export function describeFile(f: ChainFile): string {
  const h = f.header;
  const what =
    h.kind === 'full'
      ? `full backup of ${describeSnap(h, 'to')}`
      : `incremental ${describeSnap(h, 'from')} -> ${describeSnap(h, 'to')}`;
  const t = f.totals;
  return (
    `${f.path}: ${what}, taken ${new Date(h.toCreated).toISOString()}; ${t.records} records: ` +
    `${mib(t.dataBytes)} data, ${mib(t.zeroBytes)} zero, ${mib(t.discardBytes)} discarded, ${t.samples} samples`
  );
}
