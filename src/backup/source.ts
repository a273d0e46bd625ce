/**
 * The NBD side of a backup: opening a snapshot export with the contexts a backup needs, its
 * facts (nbdsnap lists `x-nbdsnap:point=`, `created=`, `generation=`, `block-size=` as
 * metadata contexts, so a remote backup needs nothing but NBD), and whole-device block status
 * for several contexts at once, as absolute extents.
 */
import { NbdClient, parseNbdUri } from '../client/nbd-client.ts';
import { errorMessage, NbdsnapError } from '../errors.ts';
import { FastReader } from './fast-reader.ts';
import type { AbsExtent } from './plan.ts';

export const FACTS_QUERY = 'x-nbdsnap:';
export const BASE_ALLOCATION = 'base:allocation';
export const dirtyContext = (from: string): string => `qemu:dirty-bitmap:${from}`;

export interface SnapshotFacts {
  point: number;
  created: number;
  /** '' when the server does not track changes for this device. */
  generation: string;
  blockSize: number;
  /**
   * The point each `qemu:dirty-bitmap:FROM` of this export counts from, by FROM
   * (`x-nbdsnap:bitmap-point=FROM@SEQ`); empty from a server that does not list them.
   */
  bitmapPoints: Map<string, number>;
}

export function parseFacts(names: readonly string[]): Partial<SnapshotFacts> {
  const out: Partial<SnapshotFacts> = { bitmapPoints: new Map() };
  for (const n of names) {
    const m = /^x-nbdsnap:([a-z-]+)=(.*)$/.exec(n);
    if (m === null) continue;
    const [, key, value] = m as unknown as [string, string, string];
    const at = value.lastIndexOf('@');
    if (key === 'bitmap-point' && at > 0) {
      const seq = Number(value.slice(at + 1));
      if (Number.isSafeInteger(seq) && seq > 0) out.bitmapPoints?.set(value.slice(0, at), seq);
    } else if (key === 'point') out.point = Number(value);
    else if (key === 'created') out.created = Number(value);
    else if (key === 'generation') out.generation = value;
    else if (key === 'block-size') out.blockSize = Number(value);
  }
  return out;
}

/** Split nbd://HOST:PORT/DEVICE@SNAP; `uriFor(name)` gives the URI of another export there. */
export function parseSnapshotUri(uri: string): { device: string; snapshot: string; uriFor: (name: string) => string } {
  const { exportName } = parseNbdUri(uri);
  const at = exportName.lastIndexOf('@');
  if (at <= 0 || at === exportName.length - 1)
    throw new NbdsnapError('BAD_ARGUMENT', `${uri} does not name a snapshot: give nbd://HOST:PORT/DEVICE@SNAP`);
  const u = new URL(uri);
  return {
    device: exportName.slice(0, at),
    snapshot: exportName.slice(at + 1),
    uriFor: (name) => {
      const v = new URL(u.href);
      v.pathname = `/${encodeURIComponent(name)}`;
      return v.href;
    },
  };
}

export interface OpenedSnapshot {
  client: NbdClient;
  facts: SnapshotFacts;
}

/**
 * Connect to a snapshot export, list its facts and select `contexts`. A missing export is
 * undefined when `optional`; a server that lists no facts is not nbdsnap (or too old).
 */
export async function openSnapshot(
  uri: string,
  contexts: string[],
  optional = false,
): Promise<OpenedSnapshot | undefined> {
  let client: NbdClient;
  try {
    client = await NbdClient.open(uri, { listMetaContexts: [FACTS_QUERY], metaContexts: contexts });
  } catch (err) {
    if (optional && /no export/.test(errorMessage(err))) return undefined;
    throw new NbdsnapError(err instanceof NbdsnapError ? err.code : 'EIO', `${uri}: ${errorMessage(err)}`);
  }
  const f = parseFacts(client.listedContexts);
  if (f.point === undefined || f.created === undefined || !Number.isSafeInteger(f.point)) {
    await client.close();
    throw new NbdsnapError(
      'BAD_CONFIG',
      `${uri} lists no x-nbdsnap: facts (snapshot point, time): is it an nbdsnap snapshot export?`,
    );
  }
  return {
    client,
    facts: {
      point: f.point,
      created: f.created,
      generation: f.generation ?? '',
      blockSize: f.blockSize ?? 0,
      bitmapPoints: f.bitmapPoints ?? new Map(),
    },
  };
}

/** Block status for every context over the whole device, clipped and merged, ascending. */
export async function mapContexts(client: NbdClient, names: string[]): Promise<Map<string, AbsExtent[]>> {
  const out = new Map<string, AbsExtent[]>(names.map((n) => [n, []]));
  const WINDOW = 1024 * 1024 * 1024;
  for (let pos = 0; pos < client.size; ) {
    const len = Math.min(WINDOW, client.size - pos);
    const reply = await client.blockStatus(pos, len);
    // every context must answer; advance by the shortest coverage among them
    const covered = names.map((n) => {
      const extents = reply.get(n);
      if (extents === undefined || extents.length === 0)
        throw new NbdsnapError('EIO', `the server sent no ${n} block status at byte ${pos}`);
      return Math.min(
        len,
        extents.reduce((s, e) => s + e.length, 0),
      );
    });
    const step = Math.min(...covered);
    if (step <= 0) throw new NbdsnapError('EIO', `empty block status at byte ${pos}`);
    for (const n of names) {
      const list = out.get(n) as AbsExtent[];
      let at = pos;
      for (const e of reply.get(n) ?? []) {
        if (at >= pos + step) break;
        const length = Math.min(e.length, pos + step - at);
        if (length <= 0) continue;
        const last = list[list.length - 1];
        if (last !== undefined && last.flags === e.flags && last.offset + last.length === at) last.length += length;
        else list.push({ offset: at, length, flags: e.flags });
        at += length;
      }
    }
    pos += step;
  }
  return out;
}

/** A connection data is read over; `into` (at least `length` bytes) may receive the data. */
export interface Reader {
  size: number;
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  close(): Promise<void>;
}

/**
 * A connection for bulk reads of `uri`: the plain one of fast-reader.ts, or for TLS the generic
 * client without structured replies.
 */
export async function openReader(uri: string): Promise<Reader> {
  const fast = await FastReader.open(uri);
  if (fast !== undefined) return fast;
  const c = await NbdClient.open(uri, { structured: false });
  return { size: c.size, read: (offset, length) => c.read(offset, length), close: () => c.close() };
}
