/**
 * The control commands: for each, the arguments it takes (checked before it runs: a wrong type,
 * a value out of range or an argument it does not know is a BAD_ARGUMENT error naming it) and
 * what it does on the snapshot manager. Looked up in a Map, so only these names are commands
 * (`constructor`, `__proto__`, `toString` are unknown like any other name).
 */
import { NbdsnapError } from '../errors.ts';
import { openRemoteRanges } from '../remote/remote-ranges.ts';
import type { SnapshotManager } from '../snapshot/manager.ts';
import { StoreSpace } from '../store/space.ts';

/** What a command may use of the connection it runs on. */
export interface CommandContext {
  /** Send an event line to this client (streaming commands). */
  emit(event: unknown): void;
  /** Resolves when the client leaves or the server stops: a streaming command then returns. */
  readonly ended: Promise<void>;
}

type Args = Record<string, unknown>;

export interface Command {
  /** The argument names it accepts, each checked by `run` (through the helpers below). */
  readonly args: readonly string[];
  run(args: Args, ctx: CommandContext): Promise<unknown>;
}

/** Longest name (device, snapshot) accepted: the NBD limit on an export name. */
const MAX_NAME = 4096;
/** Most devices in one consistency group. */
const MAX_DEVICES = 1024;

export function commandTable(manager: SnapshotManager): Map<string, Command> {
  const table = new Map<string, Command>();
  const add = (name: string, args: readonly string[], run: Command['run']) => table.set(name, { args, run });

  add('status', [], async () => manager.status());
  add('snapshot.create', ['devices', 'name', 'writable'], async (a) => {
    const devices = names(a.devices, 'devices');
    const snaps = await manager.createSnapshot(devices, name(a.name, 'name'), bool(a.writable, 'writable'));
    return snaps.map((s) => `${s.origin.name}@${s.name}`);
  });
  add('snapshot.list', [], async () => manager.list());
  add('snapshot.delete', ['device', 'name'], async (a) =>
    manager.deleteSnapshot(name(a.device, 'device'), name(a.name, 'name')),
  );
  add('store.append', ['range'], async (a) => {
    const spec = text(a.range, 'range');
    await openRemoteRanges([spec]); // a range on an nbd:// export is connected first
    return manager.appendStore(StoreSpace.resolve(spec));
  });
  add('store.status', [], async () => manager.storeStatus());
  add('store.scrub', ['speed'], async (a, ctx) =>
    manager.scrub(
      (p) => ctx.emit({ type: 'scrub-progress', ...p }),
      a.speed === undefined ? 0 : count(a.speed, 'speed', 0),
    ),
  );
  add('merge.start', ['device', 'name', 'onNextStart', 'speed'], async (a) =>
    manager.startMerge(
      name(a.device, 'device'),
      name(a.name, 'name'),
      bool(a.onNextStart, 'onNextStart'),
      a.speed === undefined ? undefined : count(a.speed, 'speed', 0),
    ),
  );
  add('merge.speed', ['device', 'name', 'speed'], async (a) =>
    manager.mergeSpeed(name(a.device, 'device'), name(a.name, 'name'), count(a.speed, 'speed', 0)),
  );
  add('merge.status', [], async () => manager.mergeStatus());
  add('cbt.changed', ['device', 'from', 'to'], async (a) =>
    manager.cbt.changed(
      name(a.device, 'device'),
      name(a.from, 'from'),
      a.to === undefined ? undefined : name(a.to, 'to'),
    ),
  );
  add('cbt.markDirty', ['device', 'offset', 'length'], async (a) =>
    manager.markDirty(name(a.device, 'device'), count(a.offset, 'offset', 0), count(a.length, 'length', 1)),
  );
  add('cbt.points', ['device'], async (a) => manager.cbtPoints(name(a.device, 'device')));
  add('cbt.forget', ['device', 'name'], async (a) => manager.cbtForget(name(a.device, 'device'), name(a.name, 'name')));
  add('events', [], async (_a, ctx) => {
    const off = manager.events.subscribe((event) => ctx.emit(event));
    try {
      await ctx.ended;
    } finally {
      off();
    }
    return null;
  });
  return table;
}

/** Refuse arguments the command does not take (a typo would otherwise be silently ignored). */
export function checkArgNames(cmd: string, command: Command, args: Args): void {
  for (const key of Object.keys(args)) {
    if (!command.args.includes(key)) {
      const takes = command.args.length === 0 ? 'takes no arguments' : `takes ${command.args.join(', ')}`;
      throw new NbdsnapError('BAD_ARGUMENT', `${cmd}: unknown argument "${key}" (${cmd} ${takes})`);
    }
  }
}

function text(v: unknown, what: string, max = 2 * MAX_NAME): string {
  if (typeof v !== 'string' || v === '') throw new NbdsnapError('BAD_ARGUMENT', `"${what}" must be a non-empty string`);
  if (Buffer.byteLength(v) > max) throw new NbdsnapError('BAD_ARGUMENT', `"${what}" is longer than ${max} bytes`);
  return v;
}

function name(v: unknown, what: string): string {
  return text(v, what, MAX_NAME);
}

function names(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || v.length === 0) throw new NbdsnapError('BAD_ARGUMENT', `"${what}" must be a non-empty list`);
  if (v.length > MAX_DEVICES) throw new NbdsnapError('BAD_ARGUMENT', `"${what}" lists more than ${MAX_DEVICES}`);
  return v.map((x) => name(x, what));
}

function bool(v: unknown, what: string): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new NbdsnapError('BAD_ARGUMENT', `"${what}" must be true or false`);
  return v;
}

/** A byte count or offset: an integer from `min` up to 2^53 - 1. */
function count(v: unknown, what: string, min: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new NbdsnapError('BAD_ARGUMENT', `"${what}" must be an integer of at least ${min}`);
  }
  return v;
}
