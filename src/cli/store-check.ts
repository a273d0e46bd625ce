/**
 * `nbdsnap store check PATH[:START+COUNT]... [--json]`: check a stopped store offline (see
 * src/store/check.ts); exit 0 when clean, 1 when damage was found, 2 for usage errors.
 * `nbdsnap store scrub [--json]`: a running server reads every live copy and records the damaged
 * ones; progress goes to stderr, the summary to stdout; exit 1 when damage was found.
 */
import type { Argv } from 'yargs';
import { call, controlPath } from '../control/client.ts';
import type { DamagedCopy, ScrubProgress, ScrubReport } from '../snapshot/damage.ts';
import { parseSize } from './numbers.ts';
import { defineCommand, withControl } from './command.ts';

export const storeCheck = defineCommand({
  command: 'check <ranges..>',
  describe: 'check a stopped store offline (labels, journal, every copy); exit 1 if damaged',
  builder: (y: Argv) =>
    y
      .positional('ranges', {
        type: 'string',
        array: true,
        demandOption: true,
        describe: 'the store ranges PATH[:START+COUNT] (sectors), first range first',
      })
      .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON' }),
  parse: (a) => ({ ranges: (a.ranges ?? []).map(String), json: a.json }),
  run: async (o) => {
    // The store code loads when the check runs, not for every command (program.ts).
    const [{ closeUnusedRemotes, openRemoteRanges }, { checkHuman, checkStore }, { StoreSpace }] = await Promise.all([
      import('../remote/remote-ranges.ts'),
      import('../store/check.ts'),
      import('../store/space.ts'),
    ]);
    await openRemoteRanges(o.ranges, true);
    const report = await checkStore(o.ranges.map((r) => StoreSpace.resolve(r))).finally(closeUnusedRemotes);
    process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : `${checkHuman(report)}\n`);
    if (!report.clean) process.exitCode = 1;
  },
});

export const storeScrub = defineCommand({
  command: 'scrub',
  describe: "read and verify every copy of a running server's store; exit 1 if damaged",
  builder: (y: Argv) =>
    withControl(y).option('speed', {
      type: 'string',
      describe: 'rate limit, bytes/s read from the store (e.g. 64M); 0: none [default: 0]',
    }),
  parse: (a) => ({
    path: controlPath(a.control),
    json: a.json,
    speed: a.speed === undefined ? 0 : parseSize(String(a.speed), 'scrub speed'),
  }),
  run: async (o) => {
    const progress = (e: unknown) => {
      const p = e as ScrubProgress;
      process.stderr.write(
        o.json ? `${JSON.stringify(p)}\n` : `scrub: ${p.checked}/${p.total} copies checked, ${p.damaged} damaged\n`,
      );
    };
    const r = (await call(o.path, 'store.scrub', { speed: o.speed }, progress)) as ScrubReport;
    const copy = (c: DamagedCopy) =>
      `damaged: ${c.device} chunk ${c.chunk} (slot ${c.slot}), read by ${c.snapshots.join(', ') || 'no snapshot'}`;
    const summary = `scrub: ${r.checked} copies (${r.bytes} bytes) checked, ${r.damaged} damaged, ${r.lostBefore} recorded lost before`;
    process.stdout.write(
      o.json ? `${JSON.stringify(r, null, 2)}\n` : `${[...r.found.map(copy), summary].join('\n')}\n`,
    );
    if (r.damaged > 0 || r.lostBefore > 0) process.exitCode = 1;
  },
});
