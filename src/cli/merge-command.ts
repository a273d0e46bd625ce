/**
 * `nbdsnap merge DEVICE@SNAP [--wait] [--on-next-start]` and `nbdsnap merge status`.
 * With --wait, progress goes to stderr: a bar redrawn in place on a terminal, plain lines
 * otherwise; the exit status says whether the merge finished (0) or failed (1).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Argv } from 'yargs';
import { call, controlPath } from '../control/client.ts';
import { NbdsnapError } from '../errors.ts';
import { defineCommand, withControl } from './command.ts';
import { type MergeInfo, mergeLine, parseSnapshotRef } from './control-commands.ts';

interface MergeOptions {
  path: string;
  /** undefined: `merge status`. */
  ref: { device: string; name: string } | undefined;
  wait: boolean;
  onNextStart: boolean;
  json: boolean;
}

export const mergeCommand = defineCommand({
  command: 'merge <snapshot>',
  describe: 'roll DEVICE@SNAP back into its origin ("merge status" lists merges)',
  builder: (y: Argv) =>
    withControl(y)
      .positional('snapshot', { type: 'string', demandOption: true, describe: 'DEVICE@SNAP, or "status"' })
      .option('wait', { type: 'boolean', default: false, describe: 'wait for the end, showing progress' })
      .option('on-next-start', { type: 'boolean', default: false, describe: 'begin when the server next starts' }),
  parse: (a): MergeOptions => {
    const snapshot = String(a.snapshot);
    if (snapshot === 'status' && (a.wait || a['on-next-start'])) {
      throw new NbdsnapError('BAD_ARGUMENT', 'merge status takes neither --wait nor --on-next-start');
    }
    return {
      path: controlPath(a.control),
      ref: snapshot === 'status' ? undefined : parseSnapshotRef(snapshot),
      wait: a.wait,
      onNextStart: a['on-next-start'],
      json: a.json,
    };
  },
  run: merge,
});

async function merge(o: MergeOptions): Promise<void> {
  if (o.ref === undefined) {
    const list = (await call(o.path, 'merge.status')) as MergeInfo[];
    process.stdout.write(
      o.json
        ? `${JSON.stringify(list, null, 2)}\n`
        : `${list.length === 0 ? 'no merges' : list.map(mergeLine).join('\n')}\n`,
    );
    return;
  }
  const label = `${o.ref.device}@${o.ref.name}`;
  const started = (await call(o.path, 'merge.start', { ...o.ref, onNextStart: o.onNextStart })) as MergeInfo;
  if (!o.wait || o.onNextStart) {
    process.stdout.write(o.json ? `${JSON.stringify(started)}\n` : `merge ${mergeLine(started)}\n`);
    return;
  }
  const tty = process.stderr.isTTY === true;
  let last = '';
  for (;;) {
    const list = (await call(o.path, 'merge.status')) as MergeInfo[];
    const p = list.find((x) => x.snapshot === label);
    if (p === undefined) {
      if (tty) process.stderr.write('\n');
      process.stderr.write(`merge of ${label} finished\n`);
      return;
    }
    if (p.state === 'failed') {
      if (tty) process.stderr.write('\n');
      const where = typeof p.failedChunk === 'number' ? ` at chunk ${p.failedChunk}` : '';
      throw new NbdsnapError('EIO', `merge failed${where}: ${p.error ?? 'unknown error'} (run merge again to retry)`);
    }
    const text = tty ? bar(p) : mergeLine(p);
    if (tty) process.stderr.write(`\r${text}`);
    else if (text !== last) process.stderr.write(`${text}\n`);
    last = text;
    await sleep(tty ? 200 : 1000);
  }
}

function bar(p: MergeInfo): string {
  const total = p.total ?? 0;
  const done = p.merged ?? 0;
  const frac = total === 0 ? 1 : done / total;
  const width = 30;
  const filled = Math.round(frac * width);
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${mergeLine(p)}`;
}
