/**
 * The commands that talk to a running server over its control socket: `snapshot`, `store`,
 * `status`, `events`. Human-readable output by default, `--json` for scripts.
 */
import type { Argv } from 'yargs';
import { call, controlPath } from '../control/client.ts';
import { NbdsnapError } from '../errors.ts';
import { storeCheckBuilder, storeCheckCommand, storeScrubBuilder, storeScrubCommand } from './store-check.ts';
import { storeFormatBuilder, storeFormatCommand } from './store-format.ts';

const withControl = <T>(y: Argv<T>) =>
  y
    .option('control', { type: 'string', describe: 'control socket [default: $NBDSNAP_CONTROL]' })
    .option('json', { type: 'boolean', default: false, describe: 'print JSON' });

type Common = { control?: string | undefined; json: boolean };

function print(result: unknown, json: boolean, human: (r: never) => string): void {
  process.stdout.write(json ? `${JSON.stringify(result, null, 2)}\n` : `${human(result as never)}\n`);
}

/** "DEVICE@SNAP" -> parts. */
export function parseSnapshotRef(ref: string): { device: string; name: string } {
  const at = ref.lastIndexOf('@');
  if (at <= 0 || at === ref.length - 1) throw new NbdsnapError('BAD_ARGUMENT', `"${ref}" is not DEVICE@SNAPSHOT`);
  return { device: ref.slice(0, at), name: ref.slice(at + 1) };
}

interface SnapInfo {
  export: string;
  state: string;
  reason?: string;
  writable: boolean;
  created: string;
  chunksInStore: number;
  chunkSize: number;
  damaged?: number;
}

const table = (rows: string[][]): string => {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i] ?? 0))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
};

const mib = (bytes: number): string => `${(bytes / 1048576).toFixed(1)} MiB`;

export function snapshotCommand(y: Argv) {
  return y
    .command(
      'create <devices> <name>',
      'take a snapshot of DEVICE, or of DEV1,DEV2,... atomically (a consistency group)',
      (c: Argv) =>
        withControl(c)
          .positional('devices', { type: 'string', demandOption: true })
          .positional('name', { type: 'string', demandOption: true })
          .option('writable', { type: 'boolean', default: false }),
      async (a) => {
        const devices = String(a.devices)
          .split(',')
          .filter((d) => d !== '');
        const result = await call(controlPath(a.control), 'snapshot.create', {
          devices,
          name: a.name,
          writable: a.writable,
        });
        print(result, a.json, (r: string[]) => r.map((e) => `created ${e}`).join('\n'));
      },
    )
    .command(
      'list',
      'list snapshots',
      (c: Argv) => withControl(c),
      async (a) => {
        const result = await call(controlPath(a.control), 'snapshot.list');
        print(result, a.json, (r: SnapInfo[]) =>
          r.length === 0
            ? 'no snapshots'
            : table([
                ['EXPORT', 'STATE', 'MODE', 'CREATED', 'IN STORE'],
                ...r.map((s) => [
                  s.export,
                  s.state + (s.reason ? ` (${s.reason})` : '') + (s.damaged ? `, ${s.damaged} damaged` : ''),
                  s.writable ? 'rw' : 'ro',
                  s.created,
                  mib(s.chunksInStore * s.chunkSize),
                ]),
              ]),
        );
      },
    )
    .command(
      'delete <snapshot>',
      'delete DEVICE@SNAP and free its store space',
      (c: Argv) => withControl(c).positional('snapshot', { type: 'string', demandOption: true }),
      async (a) => {
        const ref = parseSnapshotRef(String(a.snapshot));
        await call(controlPath(a.control), 'snapshot.delete', ref);
        print({ deleted: a.snapshot }, a.json, () => `deleted ${a.snapshot}`);
      },
    )
    .demandCommand(1, 'snapshot: create, list or delete');
}

interface StoreInfo {
  chunkSize: number;
  transient: boolean;
  totalBytes: number;
  usedBytes: number;
  freeBytes: number;
  journalBytes: number;
  ranges: { path: string; startSector: number; sectors: number; slots: number }[];
  perSnapshot: { snapshot: string; bytes: number }[];
}

export function storeHuman(s: StoreInfo): string {
  return [
    `store: ${mib(s.totalBytes)} total, ${mib(s.usedBytes)} used, ${mib(s.freeBytes)} free, ${mib(s.journalBytes)} journal, chunk ${s.chunkSize}${s.transient ? ', transient' : ''}`,
    table([
      ['RANGE', 'START', 'SECTORS', 'CHUNKS'],
      ...s.ranges.map((r) => [r.path, String(r.startSector), String(r.sectors), String(r.slots)]),
    ]),
    ...(s.perSnapshot.length > 0
      ? [table([['SNAPSHOT', 'USED'], ...s.perSnapshot.map((p) => [p.snapshot, mib(p.bytes)])])]
      : []),
  ].join('\n');
}

export function storeCommand(y: Argv) {
  return y
    .command(
      'append <range>',
      'add PATH[:START+COUNT] (512-byte sectors) to the difference store while snapshots are held',
      (c: Argv) => withControl(c).positional('range', { type: 'string', demandOption: true }),
      async (a) => {
        await call(controlPath(a.control), 'store.append', { range: a.range });
        print({ appended: a.range }, a.json, () => `appended ${a.range}`);
      },
    )
    .command(
      'status',
      'show the store ranges, what is used and free, per snapshot',
      (c: Argv) => withControl(c),
      async (a) => print(await call(controlPath(a.control), 'store.status'), a.json, storeHuman),
    )
    .command(
      'format <ranges..>',
      'make a new, empty store on PATH[:START+COUNT]... (range 0 first), offline',
      storeFormatBuilder,
      (a) => storeFormatCommand(a as never),
    )
    .command('check <ranges..>', 'check a stopped store offline: labels, journal, every copy', storeCheckBuilder, (a) =>
      storeCheckCommand(a as never),
    )
    .command('scrub', "verify every copy in a running server's store, recording damaged ones", storeScrubBuilder, (a) =>
      storeScrubCommand(a as never),
    )
    .demandCommand(1, 'store: append, status, format, check or scrub');
}

export async function statusCommand(a: Common): Promise<void> {
  const r = (await call(controlPath(a.control), 'status')) as {
    devices: { name: string; size: number; chunkSize: number; snapshots: number }[];
    snapshots: SnapInfo[];
    store: StoreInfo | null;
    merges?: { snapshot: string; state: string; merged: number; total: number }[];
  };
  print(r, a.json, () =>
    [
      table([
        ['DEVICE', 'SIZE', 'CHUNK', 'SNAPSHOTS'],
        ...r.devices.map((d) => [d.name, mib(d.size), String(d.chunkSize), String(d.snapshots)]),
      ]),
      ...r.snapshots.map((s) => `snapshot ${s.export}: ${s.state}${s.reason ? ` (${s.reason})` : ''}`),
      ...(r.merges ?? []).map((m) => `merge ${m.snapshot}: ${m.state}, ${m.merged}/${m.total} chunks`),
      r.store === null ? 'store: none' : storeHuman(r.store),
    ].join('\n'),
  );
}

export async function eventsCommand(a: { control?: string | undefined }): Promise<void> {
  await call(controlPath(a.control), 'events', {}, (e) => process.stdout.write(`${JSON.stringify(e)}\n`));
}

export { withControl };
