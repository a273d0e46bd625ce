/**
 * `nbdsnap merge DEVICE@SNAP [--wait] [--on-next-start]` and `nbdsnap merge status`.
 * With --wait, progress goes to stderr: a bar redrawn in place on a terminal, plain lines
 * otherwise; the exit status says whether the merge finished (0) or failed (1).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Argv } from 'yargs';
import { call, controlPath } from '../control/client.ts';
import { NbdsnapError } from '../errors.ts';
import { parseSnapshotRef, withControl } from './control-commands.ts';

interface Progress {
  snapshot: string;
  state: string;
  merged?: number;
  total?: number;
  bytesPerSecond?: number;
  failedChunk?: number;
  error?: string;
}

export function mergeBuilder(y: Argv) {
  return withControl(y)
    .positional('snapshot', { type: 'string', demandOption: true, describe: 'DEVICE@SNAP, or "status"' })
    .option('wait', { type: 'boolean', default: false, describe: 'wait for the end, showing progress' })
    .option('on-next-start', { type: 'boolean', default: false, describe: 'begin when the server next starts' });
}

export async function mergeCommand(a: {
  snapshot: string;
  wait: boolean;
  'on-next-start': boolean;
  control?: string | undefined;
  json: boolean;
}) {
  const path = controlPath(a.control);
  if (a.snapshot === 'status') {
    const list = (await call(path, 'merge.status')) as Progress[];
    process.stdout.write(
      a.json
        ? `${JSON.stringify(list, null, 2)}\n`
        : `${list.length === 0 ? 'no merges' : list.map(line).join('\n')}\n`,
    );
    return;
  }
  const ref = parseSnapshotRef(a.snapshot);
  const started = (await call(path, 'merge.start', { ...ref, onNextStart: a['on-next-start'] })) as Progress;
  if (!a.wait || a['on-next-start']) {
    process.stdout.write(a.json ? `${JSON.stringify(started)}\n` : `merge ${line(started)}\n`);
    return;
  }
  const tty = process.stderr.isTTY === true;
  let last = '';
  for (;;) {
    const list = (await call(path, 'merge.status')) as Progress[];
    const p = list.find((x) => x.snapshot === a.snapshot);
    if (p === undefined) {
      if (tty) process.stderr.write('\n');
      process.stderr.write(`merge of ${a.snapshot} finished\n`);
      return;
    }
    if (p.state === 'failed') {
      if (tty) process.stderr.write('\n');
      throw new NbdsnapError('EIO', `merge failed at chunk ${p.failedChunk}: ${p.error} (run merge again to retry)`);
    }
    const text = tty ? bar(p) : line(p);
    if (tty) process.stderr.write(`\r${text}`);
    else if (text !== last) process.stderr.write(`${text}\n`);
    last = text;
    await sleep(tty ? 200 : 1000);
  }
}

function line(p: Progress): string {
  if (p.total === undefined) return `${p.snapshot}: ${p.state}`;
  const rate = p.bytesPerSecond === undefined ? '' : `, ${(p.bytesPerSecond / 1048576).toFixed(1)} MiB/s`;
  return `${p.snapshot}: ${p.state}, ${p.merged}/${p.total} chunks merged${rate}`;
}

function bar(p: Progress): string {
  const total = p.total ?? 0;
  const done = p.merged ?? 0;
  const frac = total === 0 ? 1 : done / total;
  const width = 30;
  const filled = Math.round(frac * width);
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${line(p)}`;
}
