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
import { parseSnapshotRef, withControl } from './control-commands.ts';

export function cbtBuilder(y: Argv) {
  return withControl(y).positional('args', { type: 'string', array: true, demandOption: true });
}

export async function cbtCommand(a: { args: string[]; control?: string | undefined; json: boolean }) {
  const path = controlPath(a.control);
  const args = a.args.map(String);
  if (args[0] === 'mark-dirty') {
    const [, device, offset, length] = args;
    if (device === undefined || offset === undefined || length === undefined || args.length !== 4) {
      throw new NbdsnapError('BAD_ARGUMENT', 'usage: nbdsnap cbt mark-dirty DEVICE OFFSET LENGTH');
    }
    const req = { device, offset: parseSize(offset, 'offset'), length: parseSize(length, 'length') };
    await call(path, 'cbt.markDirty', req);
    process.stdout.write(
      a.json
        ? `${JSON.stringify({ markedDirty: req })}\n`
        : `marked [${req.offset}, +${req.length}) of ${device} dirty\n`,
    );
    return;
  }
  if (args.length < 1 || args.length > 2)
    throw new NbdsnapError('BAD_ARGUMENT', 'usage: nbdsnap cbt DEVICE@FROM [DEVICE@TO]');
  const from = parseSnapshotRef(args[0] as string);
  const to = args[1] === undefined ? undefined : parseSnapshotRef(args[1]);
  if (to !== undefined && to.device !== from.device)
    throw new NbdsnapError('BAD_ARGUMENT', 'FROM and TO must be snapshots of the same device');
  const r = (await call(path, 'cbt.changed', {
    device: from.device,
    from: from.name,
    ...(to === undefined ? {} : { to: to.name }),
  })) as ChangedRanges;
  if (a.json) {
    process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    return;
  }
  const lines = r.ranges.map((x) => `${x.offset} ${x.length}`);
  const pct = r.deviceBytes === 0 ? 0 : (100 * r.changedBytes) / r.deviceBytes;
  lines.push(
    `# ${r.device}@${r.from} -> ${r.to}: ${r.ranges.length} ranges, ${r.changedBytes} bytes changed (${pct.toFixed(1)}%), block ${r.blockSize}, generation ${r.generation}`,
  );
  process.stdout.write(`${lines.join('\n')}\n`);
}
