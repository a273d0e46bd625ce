/**
 * The commands that talk to a running server over its control socket: `snapshot`, `store`,
 * `status`, `events`. Human-readable output by default, `--json` for scripts. The human
 * formats are pure functions of the server's answer (exported for unit tests) and never show
 * `undefined` or `NaN`: a figure the server did not give is left out.
 */
import type { Argv } from 'yargs';
import { call, controlPath } from '../control/client.ts';
import { NbdsnapError } from '../errors.ts';
import { parseSize } from './numbers.ts';
import { defineCommand, defineGroup, withControl } from './command.ts';
import { storeCheck, storeScrub } from './store-check.ts';
import type { StoreFormatOptions } from './store-format.ts';

type ControlArgs = { control?: string | undefined; json: boolean };

export function print(result: unknown, json: boolean, human: (r: never) => string): void {
  process.stdout.write(json ? `${JSON.stringify(result, null, 2)}\n` : `${human(result as never)}\n`);
}

/** "DEVICE@SNAP" -> parts. */
export function parseSnapshotRef(ref: string): { device: string; name: string } {
  const at = ref.lastIndexOf('@');
  if (at <= 0 || at === ref.length - 1) throw new NbdsnapError('BAD_ARGUMENT', `"${ref}" is not DEVICE@SNAPSHOT`);
  return { device: ref.slice(0, at), name: ref.slice(at + 1) };
}

export interface SnapInfo {
  export: string;
  state: string;
  reason?: string;
  writable: boolean;
  created: string;
  chunksInStore: number;
  exclusiveChunks?: number;
  chunkSize: number;
  /** Chunks it reads whose store copy was found damaged (reads of them answer EIO). */
  damaged?: number;
}

export interface StoreInfo {
  chunkSize: number;
  transient: boolean;
  totalBytes: number;
  usedBytes: number;
  freeBytes: number;
  journalBytes: number;
  ranges: { path: string; startSector: number; sectors: number; slots: number }[];
  perSnapshot: { snapshot: string; bytes: number; exclusiveBytes?: number }[];
}

export interface MergeInfo {
  snapshot: string;
  state: string;
  merged?: number;
  total?: number;
  bytesPerSecond?: number;
  /** The rate limit, bytes per second (0: none). */
  speed?: number;
  failedChunk?: number;
  error?: string;
}

export interface StatusInfo {
  devices: { name: string; size: number; chunkSize: number; snapshots: number }[];
  snapshots: SnapInfo[];
  store: StoreInfo | null;
  merges?: MergeInfo[];
}

export const table = (rows: string[][]): string => {
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

const isNumber = (n: unknown): n is number => typeof n === 'number' && Number.isFinite(n);
/** Bytes as MiB; "-" when the figure is missing. */
export const mib = (bytes: unknown): string => (isNumber(bytes) ? `${(bytes / 1048576).toFixed(1)} MiB` : '-');
const num = (n: unknown): string => (isNumber(n) ? String(n) : '-');

export function snapshotsHuman(r: SnapInfo[]): string {
  if (r.length === 0) return 'no snapshots';
  return table([
    ['EXPORT', 'STATE', 'MODE', 'CREATED', 'IN STORE', 'ONLY IT'],
    ...r.map((s) => [
      s.export,
      s.state + (s.reason ? ` (${s.reason})` : '') + (s.damaged ? `, ${s.damaged} damaged` : ''),
      s.writable ? 'rw' : 'ro',
      s.created,
      mib(s.chunksInStore * s.chunkSize),
      mib(isNumber(s.exclusiveChunks) ? s.exclusiveChunks * s.chunkSize : undefined),
    ]),
  ]);
}

export function storeHuman(s: StoreInfo): string {
  return [
    `store: ${mib(s.totalBytes)} total, ${mib(s.usedBytes)} used, ${mib(s.freeBytes)} free, ${mib(s.journalBytes)} journal, chunk ${num(s.chunkSize)}${s.transient ? ', transient' : ''}`,
    table([
      ['RANGE', 'START', 'SECTORS', 'CHUNKS'],
      ...s.ranges.map((r) => [r.path, num(r.startSector), num(r.sectors), num(r.slots)]),
    ]),
    ...(s.perSnapshot.length > 0
      ? [
          table([
            ['SNAPSHOT', 'IN STORE', 'ONLY IT'],
            ...s.perSnapshot.map((p) => [p.snapshot, mib(p.bytes), mib(p.exclusiveBytes)]),
          ]),
        ]
      : []),
  ].join('\n');
}

/** One merge: "disk@s: merging, 10/96 chunks merged, 12.0 MiB/s", or just its state. */
export function mergeLine(p: MergeInfo): string {
  const parts = [`${p.snapshot}: ${p.state}`];
  if (isNumber(p.merged) && isNumber(p.total)) parts.push(`${p.merged}/${p.total} chunks merged`);
  if (isNumber(p.bytesPerSecond) && p.state === 'merging') parts.push(`${mib(p.bytesPerSecond)}/s`);
  if (isNumber(p.speed) && p.speed > 0) parts.push(`limit ${mib(p.speed)}/s`);
  if (p.state === 'failed') {
    parts.push(
      `${isNumber(p.failedChunk) ? `stopped at chunk ${p.failedChunk}` : 'stopped'}${p.error ? `: ${p.error}` : ''}`,
    );
  }
  return parts.join(', ');
}

export function statusHuman(r: StatusInfo): string {
  return [
    table([
      ['DEVICE', 'SIZE', 'CHUNK', 'SNAPSHOTS'],
      ...r.devices.map((d) => [d.name, mib(d.size), num(d.chunkSize), num(d.snapshots)]),
    ]),
    ...r.snapshots.map((s) => `snapshot ${s.export}: ${s.state}${s.reason ? ` (${s.reason})` : ''}`),
    ...(r.merges ?? []).map((m) => `merge ${mergeLine(m)}`),
    r.store === null ? 'store: none' : storeHuman(r.store),
  ].join('\n');
}

const create = defineCommand({
  command: 'create <devices> <name>',
  describe: 'take a snapshot of DEVICE, or of DEV1,DEV2,... atomically (a consistency group)',
  builder: (c: Argv) =>
    withControl(c)
      .positional('devices', { type: 'string', demandOption: true })
      .positional('name', { type: 'string', demandOption: true })
      .option('writable', { type: 'boolean', default: false }),
  parse: (a) => {
    const devices = String(a.devices)
      .split(',')
      .filter((d) => d !== '');
    if (devices.length === 0) throw new NbdsnapError('BAD_ARGUMENT', 'name at least one device');
    return { path: controlPath(a.control), devices, name: String(a.name), writable: a.writable, json: a.json };
  },
  run: async (o) => {
    const result = await call(o.path, 'snapshot.create', { devices: o.devices, name: o.name, writable: o.writable });
    print(result, o.json, (r: string[]) => r.map((e) => `created ${e}`).join('\n'));
  },
});

/** A command that sends one request without arguments and prints its answer. */
const query = (command: string, describe: string, cmd: string, human: (r: never) => string) =>
  defineCommand({
    command,
    describe,
    builder: (c: Argv) => withControl(c),
    parse: (a: ControlArgs) => ({ path: controlPath(a.control), json: a.json }),
    run: async (o) => print(await call(o.path, cmd), o.json, human),
  });

const remove = defineCommand({
  command: 'delete <snapshot>',
  describe: 'delete DEVICE@SNAP and free its store space',
  builder: (c: Argv) => withControl(c).positional('snapshot', { type: 'string', demandOption: true }),
  parse: (a) => ({ path: controlPath(a.control), ref: parseSnapshotRef(String(a.snapshot)), json: a.json }),
  run: async (o) => {
    await call(o.path, 'snapshot.delete', o.ref);
    const label = `${o.ref.device}@${o.ref.name}`;
    print({ deleted: label }, o.json, () => `deleted ${label}`);
  },
});

export const snapshotCommand = defineGroup({
  name: 'snapshot',
  describe: 'create, list or delete snapshots of a running server',
  commands: [create, query('list', 'list snapshots', 'snapshot.list', snapshotsHuman), remove],
});

const append = defineCommand({
  command: 'append <range>',
  describe: 'add PATH[:START+COUNT] (512-byte sectors) to the difference store while snapshots are held',
  builder: (c: Argv) => withControl(c).positional('range', { type: 'string', demandOption: true }),
  parse: (a) => ({ path: controlPath(a.control), range: String(a.range), json: a.json }),
  run: async (o) => {
    await call(o.path, 'store.append', { range: o.range });
    print({ appended: o.range }, o.json, () => `appended ${o.range}`);
  },
});

function storeFormatBuilder(y: Argv) {
  return y
    .positional('ranges', {
      type: 'string',
      array: true,
      demandOption: true,
      describe: 'PATH[:START+COUNT] (512-byte sectors), range 0 first',
    })
    .option('chunk-size', { type: 'string', describe: 'copy-on-write chunk, 4K..1M [default: 64K]' })
    .option('transient', { type: 'boolean', default: false, describe: 'label the ranges for --transient serving' })
    .option('force', {
      type: 'boolean',
      default: false,
      describe: 'format over a filesystem, LVM, swap, LUKS, partition table or persistent store',
    });
}

/** The `store` subcommands; others (offline ones) are added to this list. */
const format = defineCommand({
  command: 'format <ranges..>',
  describe: 'make a new, empty store on PATH[:START+COUNT]... (range 0 first), offline',
  builder: storeFormatBuilder,
  parse: (a): StoreFormatOptions => {
    const chunk = a['chunk-size'];
    return {
      ranges: (a.ranges ?? []).map(String),
      chunkSize: chunk === undefined ? undefined : parseSize(String(chunk), 'chunk size'),
      transient: a.transient,
      force: a.force,
    };
  },
  run: async (o) => {
    const { storeFormat } = await import('./store-format.ts'); // the store code, only when formatting
    process.stdout.write(`${await storeFormat(o)}\n`);
  },
});

export const storeCommands = [
  append,
  query('status', 'show the store ranges, what is used and free, per snapshot', 'store.status', storeHuman),
  format,
  storeCheck,
  storeScrub,
];

export const storeCommand = defineGroup({
  name: 'store',
  describe: 'format a store offline; append to or show the store of a running server',
  commands: storeCommands,
});

export const statusCommand = query('status', 'show devices, snapshots and the store', 'status', statusHuman);

export const eventsCommand = defineCommand({
  command: 'events',
  describe: 'stream events (one JSON object a line) until the server stops',
  builder: (y: Argv) => withControl(y),
  parse: (a: ControlArgs) => ({ path: controlPath(a.control) }),
  run: async (o) => {
    await call(o.path, 'events', {}, (e) => process.stdout.write(`${JSON.stringify(e)}\n`));
    process.stderr.write('nbdsnap: events: the server stopped\n');
  },
});
