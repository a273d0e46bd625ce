/**
 * Where a restore writes: a regular file or a block device path (positional I/O through the
 * project's FileDevice: zeroes and discards become fallocate where possible) or an NBD export
 * (nbd:// or nbd+unix:// through NbdClient). `probeTarget` looks without touching anything, so
 * a refused restore leaves the target exactly as it was (not even created).
 */
import { statSync, truncateSync, writeFileSync } from 'node:fs';
import { FileDevice } from '../block/file-device.ts';
import { NbdClient } from '../client/nbd-client.ts';
import { errorMessage, NbdsnapError } from '../errors.ts';
import { CommandFlag, TransmissionFlag } from '../nbd-protocol/index.ts';
import type { AbsExtent } from './plan.ts';
import { BASE_ALLOCATION, mapContexts } from './source.ts';

export interface Target {
  readonly description: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  /** Make a range read as zeroes; `discard`: it may be deallocated. */
  zero(offset: number, length: number, discard: boolean): Promise<void>;
  flush(): Promise<void>;
  /** `base:allocation` over the whole target, ascending (all data when unknown). */
  allocation(): Promise<AbsExtent[]>;
  close(): Promise<void>;
}

const ZERO_FLAG = 2;

/** The ranges a target says read as zeroes (base:allocation ZERO), so they need not be read. */
export async function zeroRanges(target: Target): Promise<[number, number][]> {
  return (await target.allocation())
    .filter((e) => (e.flags & ZERO_FLAG) !== 0)
    .map((e): [number, number] => [e.offset, e.length]);
}

/** True when [offset, offset+length) lies inside one of the (ascending) ranges. */
export function inRanges(ranges: [number, number][], offset: number, length: number): boolean {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [o, l] = ranges[mid] as [number, number];
    if (offset < o) hi = mid - 1;
    else if (offset >= o + l) lo = mid + 1;
    else return offset + length <= o + l;
  }
  return false;
}

export interface TargetInfo {
  spec: string;
  kind: 'nbd' | 'file' | 'block device' | 'missing';
  /** Current size (0 for a missing file). */
  size: number;
}

export const isNbdUri = (spec: string): boolean => /^nbds?(\+unix)?:\/\//.test(spec);

/** What the target is and how big, without changing it. */
export async function probeTarget(spec: string): Promise<TargetInfo> {
  if (isNbdUri(spec)) {
    const c = await openNbd(spec);
    await c.close();
    return { spec, kind: 'nbd', size: c.size };
  }
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(spec);
  } catch {
    return { spec, kind: 'missing', size: 0 };
  }
  if (st.isFile()) return { spec, kind: 'file', size: st.size };
  if (st.isBlockDevice()) {
    const d = await FileDevice.open(spec, { readOnly: true });
    await d.close();
    return { spec, kind: 'block device', size: d.size };
  }
  throw new NbdsnapError('BAD_ARGUMENT', `${spec} is neither a file, a block device nor an nbd:// URI`);
}

async function openNbd(uri: string): Promise<NbdClient> {
  let c: NbdClient;
  try {
    c = await NbdClient.open(uri, { metaContexts: [BASE_ALLOCATION] }).catch((err) =>
      /does not offer/.test(errorMessage(err)) ? NbdClient.open(uri) : Promise.reject(err),
    );
  } catch (err) {
    throw new NbdsnapError('NOT_FOUND', `target ${uri}: ${errorMessage(err)}`);
  }
  if ((c.transmissionFlags & TransmissionFlag.READ_ONLY) !== 0) {
    await c.close();
    throw new NbdsnapError('BAD_ARGUMENT', `target ${uri} is read-only`);
  }
  return c;
}

/**
 * Open for writing. A missing file is created, and a missing or empty file is grown, to `size`
 * (only called once every check has passed).
 */
export async function openTarget(info: TargetInfo, size: number): Promise<Target> {
  if (info.kind === 'nbd') return nbdTarget(info.spec, await openNbd(info.spec));
  if (info.kind === 'missing') writeFileSync(info.spec, '', { flag: 'wx', mode: 0o644 });
  if ((info.kind === 'missing' || info.kind === 'file') && info.size < size) truncateSync(info.spec, size);
  const d = await FileDevice.open(info.spec);
  return {
    description: info.spec,
    size: d.size,
    read: (o, l) => d.read(o, l),
    write: (o, data) => d.write(o, data, false),
    zero: (o, l, discard) => d.writeZeroes(o, l, { mayTrim: discard, fast: false, fua: false }),
    flush: () => d.flush(),
    async allocation() {
      const out: AbsExtent[] = [];
      for (let pos = 0; pos < d.size; ) {
        const extents = await d.extents(pos, Math.min(d.size - pos, 1024 * 1024 * 1024));
        for (const e of extents) {
          const length = Math.min(e.length, d.size - pos);
          if (length <= 0) break;
          out.push({ offset: pos, length, flags: e.flags });
          pos += length;
        }
        if (extents.length === 0) break;
      }
      return out;
    },
    close: () => d.close(),
  };
}

const NBD_IO = 4 * 1024 * 1024;
const NBD_ZERO = 1024 * 1024 * 1024;

function nbdTarget(uri: string, c: NbdClient): Target {
  const canZero = (c.transmissionFlags & TransmissionFlag.SEND_WRITE_ZEROES) !== 0;
  const zeroes = Buffer.alloc(NBD_IO);
  return {
    description: uri,
    size: c.size,
    async read(offset, length) {
      const parts: Promise<Buffer>[] = [];
      for (let at = offset; at < offset + length; at += NBD_IO)
        parts.push(c.read(at, Math.min(NBD_IO, offset + length - at)));
      return parts.length === 1 ? (parts[0] as Promise<Buffer>) : Buffer.concat(await Promise.all(parts));
    },
    async write(offset, data) {
      const parts: Promise<void>[] = [];
      for (let at = 0; at < data.length; at += NBD_IO)
        parts.push(c.write(offset + at, data.subarray(at, Math.min(data.length, at + NBD_IO))));
      await Promise.all(parts);
    },
    async zero(offset, length, discard) {
      const parts: Promise<void>[] = [];
      const step = canZero ? NBD_ZERO : NBD_IO;
      for (let at = offset; at < offset + length; at += step) {
        const n = Math.min(step, offset + length - at);
        parts.push(
          canZero ? c.writeZeroes(at, n, discard ? 0 : CommandFlag.NO_HOLE) : c.write(at, zeroes.subarray(0, n)),
        );
      }
      await Promise.all(parts);
    },
    flush: () => c.flush(),
    async allocation() {
      if (c.contexts.size === 0) return [{ offset: 0, length: c.size, flags: 0 }];
      return (await mapContexts(c, [BASE_ALLOCATION])).get(BASE_ALLOCATION) ?? [];
    },
    close: () => c.close(),
  };
}
