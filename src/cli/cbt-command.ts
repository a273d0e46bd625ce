/**
 * `nbdsnap cbt DEVICE@FROM [DEVICE@TO]`: the ranges changed between two snapshots (or since
 * FROM, against the origin now), with totals; `--json` for scripts.
 * `nbdsnap cbt mark-dirty DEVICE OFFSET LENGTH`: record a range as changed (e.g. after editing
 * data behind nbdsnap's back), as blksnap's markdirty does.
 */
import type { Argv } from 'yargs';
import type { ChangedRanges } from '../cbt/cbt-control.ts';
import { call, controlPath } from '../control/client.ts';
import { NbdsnapError } from '../errors.ts';
import { parseSize } from './args.ts';
import { defineCommand, withControl } from './command.ts';
import { parseSnapshotRef } from './control-commands.ts';

type CbtOptions =
  | { path: string; json: boolean; markDirty: { device: string; offset: number; length: number } }
  | { path: string; json: boolean; markDirty?: undefined; device: string; from: string; to?: string | undefined };

export const cbtCommand = defineCommand({
  command: 'cbt <args..>',
  describe: 'changed ranges: cbt DEV@FROM [DEV@TO]; or cbt mark-dirty DEV OFFSET LENGTH',
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
    if (args.length < 1 || args.length > 2)
      throw new NbdsnapError('BAD_ARGUMENT', 'usage: nbdsnap cbt DEVICE@FROM [DEVICE@TO]');
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
