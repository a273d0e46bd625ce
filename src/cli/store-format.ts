/**
 * `nbdsnap store format PATH[:START+COUNT]... [--chunk-size N] [--transient] [--force]`: make a
 * new, empty store on the given ranges (range 0 first), offline, without a control socket. This
 * is the explicit consent `serve` asks for before it uses a range that is not blank. Like mkfs
 * and pvcreate, it refuses a range holding a recognised signature (a filesystem, LVM, swap,
 * LUKS, a partition table) or a persistent nbdsnap store unless `--force`; unrecognised data and
 * transient stores (whose maps die with their server) are formatted without it. The command's
 * options are in control-commands.ts, which loads this module when the command runs.
 */
import { NbdsnapError } from '../errors.ts';
import { closeUnusedRemotes, openRemoteRanges } from '../remote/remote-ranges.ts';
import { rangeSpec } from '../store/label.ts';
import { describeContent, probeRange, type RangeContent } from '../store/probe.ts';
import { type StoreRange, StoreSpace } from '../store/space.ts';
import { checkChunkSize, DEFAULT_CHUNK_SIZE, DiffStore } from '../store/store.ts';

/** Why `range` may not be formatted without --force, or undefined if it may. */
export function formatRefusal(range: StoreRange, c: RangeContent): string | undefined {
  const spec = rangeSpec(range);
  switch (c.kind) {
    case 'blank':
    case 'data':
    case 'unchecked':
      return undefined;
    case 'label':
      return c.label.kind === 'transient'
        ? undefined
        : `${spec} holds persistent nbdsnap store ${c.label.uuid} (its range ${c.label.index}) with its snapshots`;
    case 'unreadable':
    case 'version':
    case 'signature':
      return `${spec} holds ${describeContent(c)}`;
  }
}

export interface StoreFormatOptions {
  ranges: string[];
  chunkSize?: number | undefined;
  transient: boolean;
  force: boolean;
}

/** Format; returns the one line to print. */
export async function storeFormat(opts: StoreFormatOptions): Promise<string> {
  if (opts.ranges.length === 0) throw new NbdsnapError('BAD_ARGUMENT', 'store format needs at least one range');
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  checkChunkSize(chunkSize);
  await openRemoteRanges(opts.ranges);
  try {
    return await format(opts, chunkSize);
  } finally {
    await closeUnusedRemotes();
  }
}

async function format(opts: StoreFormatOptions, chunkSize: number): Promise<string> {
  const ranges = opts.ranges.map((s) => StoreSpace.resolve(s));
  for (const range of ranges) {
    const why = formatRefusal(range, await probeRange(range));
    if (why !== undefined && !opts.force) {
      throw new NbdsnapError('EXISTS', `${why}; refusing to format it without --force`);
    }
  }
  const store = await DiffStore.create(ranges, chunkSize, opts.transient ? 'transient' : 'persistent');
  const uuid = store.uuid;
  store.close();
  const kind = opts.transient ? 'transient' : 'persistent';
  return `formatted ${kind} store ${uuid} on ${ranges.map(rangeSpec).join(', ')} (chunk size ${chunkSize})`;
}
