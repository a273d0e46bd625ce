/**
 * `nbdsnap merge DEVICE@SNAP [--wait] [--on-next-start] [--speed SPEED]`, `nbdsnap merge status`
 * and `nbdsnap merge speed DEVICE@SNAP SPEED` (the rate limit of a merge in progress, bytes per
 * second with K/M/G suffixes, 0 for none).
 * With --wait, progress goes to stderr: a bar redrawn in place on a terminal, plain lines
 * otherwise; the exit status says whether the merge finished (0) or failed (1).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Argv } from 'yargs';
import { call, controlPath } from '../control/client.ts';
import { NbdsnapError } from '../errors.ts';
import { parseSize } from './numbers.ts';
import { defineCommand, withControl } from './command.ts';
import { type MergeInfo, mergeLine, parseSnapshotRef } from './control-commands.ts';

interface MergeOptions {
  path: string;
  /** undefined: `merge status`. */
  ref: { device: string; name: string } | undefined;
  /** --speed, or the SPEED of `merge speed`. */
  speed: number | undefined;
  /** `merge speed DEVICE@SNAP SPEED`. */
  setSpeed: boolean;
  wait: boolean;
  onNextStart: boolean;
  json: boolean;
}

export const mergeCommand = defineCommand({
  command: 'merge <snapshot> [args..]',
  describe: 'roll DEVICE@SNAP back into its origin ("merge status" lists merges, "merge speed DEVICE@SNAP SPEED")',
  builder: (y: Argv) =>
    withControl(y)
      .positional('snapshot', { type: 'string', demandOption: true, describe: 'DEVICE@SNAP, "status" or "speed"' })
      .positional('args', { type: 'string', array: true, describe: 'after "speed": DEVICE@SNAP SPEED' })
      .option('wait', { type: 'boolean', default: false, describe: 'wait for the end, showing progress' })
      .option('on-next-start', { type: 'boolean', default: false, describe: 'begin when the server next starts' })
      .option('speed', {
        type: 'string',
        describe: 'rate limit, bytes/s (e.g. 64M); 0: none [default: serve --merge-speed]',
      }),
  parse: (a): MergeOptions => {
    const snapshot = String(a.snapshot);
    const rest = (a.args ?? []).map(String);
    const setSpeed = snapshot === 'speed';
    if (setSpeed) {
      if (rest.length !== 2 || a.speed !== undefined)
        throw new NbdsnapError('BAD_ARGUMENT', 'merge speed takes DEVICE@SNAP SPEED (e.g. merge speed disk@a 32M)');
    } else if (rest.length > 0) {
      throw new NbdsnapError('BAD_ARGUMENT', `merge takes one DEVICE@SNAP (not "${rest.join(' ')}")`);
    }
    if ((snapshot === 'status' || setSpeed) && (a.wait || a['on-next-start'])) {
      throw new NbdsnapError('BAD_ARGUMENT', `merge ${snapshot} takes neither --wait nor --on-next-start`);
    }
    if (snapshot === 'status' && a.speed !== undefined)
      throw new NbdsnapError('BAD_ARGUMENT', 'merge status takes no --speed');
    if (a['on-next-start'] && a.speed !== undefined)
      throw new NbdsnapError('BAD_ARGUMENT', "a merge at the next start runs at serve's --merge-speed");
    const speedText = setSpeed ? rest[1] : a.speed;
    return {
      path: controlPath(a.control),
      ref: snapshot === 'status' ? undefined : parseSnapshotRef(setSpeed ? (rest[0] as string) : snapshot),
      speed: speedText === undefined ? undefined : parseSize(String(speedText), 'merge speed'),
      setSpeed,
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
  if (o.setSpeed) {
    const p = (await call(o.path, 'merge.speed', { ...o.ref, speed: o.speed })) as MergeInfo;
    process.stdout.write(o.json ? `${JSON.stringify(p)}\n` : `merge ${mergeLine(p)}\n`);
    return;
  }
  const speed = o.speed === undefined ? {} : { speed: o.speed };
  const started = (await call(o.path, 'merge.start', { ...o.ref, onNextStart: o.onNextStart, ...speed })) as MergeInfo;
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
