/**
 * `nbdsnap cbt DEVICE@FROM [DEVICE@TO]`: the ranges changed between two snapshots (or since
 * FROM, against the origin now), with totals; `--json` for scripts.
 * `nbdsnap cbt mark-dirty DEVICE OFFSET LENGTH`: record a range as changed (e.g. after editing
 * data behind nbdsnap's back), as blksnap's markdirty does.
 * `nbdsnap cbt points DEVICE`: the snapshot points FROM can name (snapshots, and deleted
 * snapshots whose point is kept); `nbdsnap cbt forget DEVICE NAME`: forget a deleted one's point.
 */
import type { Argv } from 'yargs';
import type { ChangedRanges } from '../cbt/cbt-control.ts';
import type { PointInfo } from '../cbt/keep.ts';
import { call, controlPath } from '../control/client.ts';
import { NbdsnapError } from '../errors.ts';
import { parseSize } from './numbers.ts';
import { defineCommand, withControl } from './command.ts';
import { parseSnapshotRef } from './control-commands.ts';

type CbtOptions =
  | { path: string; json: boolean; markDirty: { device: string; offset: number; length: number } }
  | { path: string; json: boolean; markDirty?: undefined; points: string }
  | { path: string; json: boolean; markDirty?: undefined; points?: undefined; forget: { device: string; name: string } }
  | {
      path: string;
      json: boolean;
      markDirty?: undefined;
      points?: undefined;
      forget?: undefined;
      device: string;
      from: string;
      to?: string | undefined;
    };

const USAGE =
  'usage: nbdsnap cbt DEVICE@FROM [DEVICE@TO] | mark-dirty DEVICE OFFSET LENGTH | points DEVICE | forget DEVICE NAME';

export const cbtCommand = defineCommand({
  command: 'cbt <args..>',
  describe: 'changed ranges: cbt DEV@FROM [DEV@TO]; or cbt mark-dirty DEV OFFSET LENGTH | points DEV | forget DEV NAME',
  builder: (y: Argv) => withControl(y).positional('args', { type: 'string', array: true, demandOption: true }),
  parse: (a): CbtOptions => {
    const path = controlPath(a.control);
    const args = a.args.map(String);
    if (args[0] === 'mark-dirty') {
      const [, device, offset, length] = args;
      if (device === undefined || offset === undefined || length === undefined || args.length !== 4) {
        throw new NbdsnapError('BAD_ARGUMENT', 'usage: nbdsnap cbt mark-dirty DEVICE OFFSET LENGTH');
      }
      const markDirty = { device, offset: parseSize(offset, 'offset'), length: parseSize(length, 'length') };
      if (markDirty.length === 0) throw new NbdsnapError('BAD_ARGUMENT', 'length must be at least 1 byte');
      return { path, json: a.json, markDirty };
    }
    if (args[0] === 'points') {
      if (args.length !== 2) throw new NbdsnapError('BAD_ARGUMENT', 'usage: nbdsnap cbt points DEVICE');
      return { path, json: a.json, points: args[1] as string };
    }
    if (args[0] === 'forget') {
      // DEVICE NAME, or DEVICE@NAME as elsewhere
      const ref = args.length === 2 ? parseSnapshotRef(args[1] as string) : undefined;
      const [, device, name] = args;
      if (ref === undefined && (args.length !== 3 || device === undefined || name === undefined))
        throw new NbdsnapError('BAD_ARGUMENT', 'usage: nbdsnap cbt forget DEVICE NAME');
      return { path, json: a.json, forget: ref ?? { device: device as string, name: name as string } };
    }
    if (args.length < 1 || args.length > 2) throw new NbdsnapError('BAD_ARGUMENT', USAGE);
    const from = parseSnapshotRef(args[0] as string);
    const to = args[1] === undefined ? undefined : parseSnapshotRef(args[1]);
    if (to !== undefined && to.device !== from.device)
      throw new NbdsnapError('BAD_ARGUMENT', 'FROM and TO must be snapshots of the same device');
    return { path, json: a.json, device: from.device, from: from.name, to: to?.name };
  },
  run: cbt,
});

async function cbt(o: CbtOptions): Promise<void> {
  if (o.markDirty !== undefined) {
    const req = o.markDirty;
    await call(o.path, 'cbt.markDirty', req);
    process.stdout.write(
      o.json
        ? `${JSON.stringify({ markedDirty: req })}\n`
        : `marked [${req.offset}, +${req.length}) of ${req.device} dirty\n`,
    );
    return;
  }
  if (o.points !== undefined) {
    const points = (await call(o.path, 'cbt.points', { device: o.points })) as PointInfo[];
    process.stdout.write(
      o.json ? `${JSON.stringify(points, null, 2)}\n` : `${pointsHuman(o.points, points).join('\n')}\n`,
    );
    return;
  }
  if (o.forget !== undefined) {
    await call(o.path, 'cbt.forget', o.forget);
    const { device, name } = o.forget;
    process.stdout.write(
      o.json ? `${JSON.stringify({ forgotten: o.forget })}\n` : `forgot the change-tracking point ${device}@${name}\n`,
    );
    return;
  }
  const r = (await call(o.path, 'cbt.changed', {
    device: o.device,
    from: o.from,
    ...(o.to === undefined ? {} : { to: o.to }),
  })) as ChangedRanges;
  if (o.json) {
    process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    return;
  }
  process.stdout.write(`${cbtHuman(r).join('\n')}\n`);
}

/** One "OFFSET LENGTH" line per changed range, then a summary line. */
export function cbtHuman(r: ChangedRanges): string[] {
  const lines = r.ranges.map((x) => `${x.offset} ${x.length}`);
  const pct = r.deviceBytes > 0 ? ` (${((100 * r.changedBytes) / r.deviceBytes).toFixed(1)}%)` : '';
  lines.push(
    `# ${r.device}@${r.from} -> ${r.to}: ${r.ranges.length} ranges, ${r.changedBytes} bytes changed${pct}, block ${r.blockSize}, generation ${r.generation}`,
  );
  return lines;
}

/** One "NAME SEQ KIND" line per point, oldest first (KIND: snapshot, or deleted: a point only). */
export function pointsHuman(device: string, points: PointInfo[]): string[] {
  if (points.length === 0) return [`# ${device}: no change-tracking points`];
  const width = Math.max(4, ...points.map((p) => p.name.length));
  return [
    `${'NAME'.padEnd(width)}  ${'POINT'.padStart(6)}  KIND`,
    ...points.map(
      (p) => `${p.name.padEnd(width)}  ${String(p.seq).padStart(6)}  ${p.snapshot ? 'snapshot' : 'deleted'}`,
    ),
  ];
}
