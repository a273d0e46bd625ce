/**
 * Storage identity: what a path is, resolved by the storage underneath rather than by its name,
 * so that two names for the same bytes are seen as one.
 *
 * - a regular file: its (st_dev, st_ino);
 * - a loop device: its backing file (or device), shifted by the loop offset and cut at its size
 *   limit (LOOP_GET_STATUS64 through the native helper, else /sys/block/loopN/loop/...);
 * - a partition: its whole disk, shifted by the partition start (/sys/dev/block/MAJ:MIN);
 * - a whole disk: its device number.
 *
 * An identity is the bottom of that chain (a file or a whole disk) with a byte extent in it;
 * `layers` keeps every step, for messages and for locking each file on the way.
 */
import { closeSync, constants, existsSync, openSync, readFileSync, realpathSync, type Stats, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { NbdsnapError } from '../errors.ts';
import { isRemote, remoteKey } from '../remote/uri.ts';
import { native } from './native.ts';

export interface StorageLayer {
  kind: 'file' | 'loop' | 'partition' | 'disk';
  /** A path that opens this layer; '' when not known (a deleted backing file, a disk without a node). */
  path: string;
  /** 'MAJ:MIN:INO' of a file (its file system and inode), 'MAJ:MIN' of a block device. */
  id: string;
  /** The byte extent used in this layer; `end` is Infinity for "to the end". */
  start: number;
  end: number;
}

export interface StorageIdentity {
  /** The path as given. */
  path: string;
  /** The storage underneath: 'file MAJ:MIN:INO' or 'disk MAJ:MIN'. */
  key: string;
  start: number;
  end: number;
  /** From the path given down to the storage underneath (the last layer is `key`). */
  layers: StorageLayer[];
}

/** Major and minor of a dev_t as Node reports it (glibc's encoding). */
export function splitDev(dev: number | bigint): { major: number; minor: number } {
  const d = BigInt(dev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn);
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn);
  return { major: Number(major), minor: Number(minor) };
}

export const devName = (dev: number | bigint): string => {
  const { major, minor } = splitDev(dev);
  return `${major}:${minor}`;
};

/** Whether two identities share any byte of the storage underneath. */
export function overlaps(a: StorageIdentity, b: StorageIdentity): boolean {
  return a.key === b.key && a.start < b.end && b.start < a.end;
}

/** "/dev/loop0 (a loop device over /srv/disk.img)", or just the path when it is the storage itself. */
export function describeIdentity(id: StorageIdentity): string {
  const below = id.layers.slice(1).filter((l) => l.kind !== 'partition' || l.path !== '');
  const first = id.layers[0];
  if (first === undefined || below.length === 0) return id.path;
  const what = first.kind === 'loop' ? 'a loop device' : first.kind === 'partition' ? 'a partition' : first.kind;
  return `${id.path} (${what} over ${below.map((l) => l.path || `device ${l.id}`).join(' over ')})`;
}

/** The identity of `path`, for the extent [start, start + length). */
export function identify(path: string, start = 0, length = Number.POSITIVE_INFINITY): StorageIdentity {
  // A remote export: the endpoint and export name are all that can be known of it.
  if (isRemote(path)) return { path, key: remoteKey(path), start, end: start + length, layers: [] };
  let st: Stats;
  try {
    st = statSync(path);
  } catch (err) {
    throw new NbdsnapError('BAD_ARGUMENT', `cannot open ${path}: ${(err as Error).message}`);
  }
  const end = start + length;
  let layers: StorageLayer[];
  if (st.isFile()) layers = [{ kind: 'file', path, id: `${devName(st.dev)}:${st.ino}`, start, end }];
  else if (st.isBlockDevice()) layers = blockLayers(path, st.rdev, start, end, 0);
  else throw new NbdsnapError('BAD_ARGUMENT', `${path} is neither a regular file nor a block device`);
  const bottom = layers[layers.length - 1] as StorageLayer;
  return {
    path,
    key: `${bottom.kind === 'file' ? 'file' : 'disk'} ${bottom.id}`,
    start: bottom.start,
    end: bottom.end,
    layers,
  };
}

const SYS_BLOCK = '/sys/dev/block';
const MAX_DEPTH = 8;

function blockLayers(path: string, rdev: number, start: number, end: number, depth: number): StorageLayer[] {
  const id = devName(rdev);
  if (depth > MAX_DEPTH) throw new NbdsnapError('BAD_ARGUMENT', `${path}: block devices nested too deep`);
  const sys = join(SYS_BLOCK, id);
  // A partition first: the loop driver answers LOOP_GET_STATUS64 on a partition of a loop device
  // too, with the whole device's status.
  const part = partitionOf(sys);
  if (part !== undefined) {
    const p = clip(start + part.start, end + part.start, part.start, part.size);
    const self: StorageLayer = { kind: 'partition', path, id, start, end };
    const parentPath = devNode(part.parent) ?? '';
    const parentRdev = makeDev(part.parent);
    return [self, ...blockLayers(parentPath, parentRdev, p.start, p.end, depth + 1)];
  }
  const loop = loopBacking(path, sys);
  if (loop !== undefined) {
    const lo = clip(start + loop.offset, end + loop.offset, loop.offset, loop.sizeLimit);
    const self: StorageLayer = { kind: 'loop', path, id, start, end };
    if (loop.rdev !== undefined) return [self, ...blockLayers(loop.name, loop.rdev, lo.start, lo.end, depth + 1)];
    return [self, { kind: 'file', path: loop.name, id: loop.fileId, start: lo.start, end: lo.end }];
  }
  return [{ kind: 'disk', path, id, start, end }];
}

/** Clip [start, end) of a layer at [base, base + size) (size 0: no limit). */
function clip(start: number, end: number, base: number, size: number): { start: number; end: number } {
  const limit = size > 0 ? base + size : Number.POSITIVE_INFINITY;
  return { start: Math.min(start, limit), end: Math.min(end, limit) };
}

interface LoopBacking {
  /** The backing file's path (as the kernel recorded it). */
  name: string;
  /** 'MAJ:MIN:INO' of a backing file. */
  fileId: string;
  /** Set when the backing is itself a block device. */
  rdev: number | undefined;
  offset: number;
  sizeLimit: number;
}

/** The loop device's backing: LOOP_GET_STATUS64 when the native helper is there, else sysfs. */
function loopBacking(path: string, sys: string): LoopBacking | undefined {
  // sysfs has loop/ for a bound loop device only; without sysfs, ask the device itself.
  if (existsSync(sys) && !existsSync(join(sys, 'loop'))) return undefined;
  const fromSys = readSys(join(sys, 'loop', 'backing_file'));
  if (native?.loopInfo !== undefined && path !== '') {
    let fd: number | undefined;
    try {
      fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
      const info = native.loopInfo(fd);
      if (info === null) return undefined;
      const name = fromSys ?? info.fileName;
      const file = statOf(name);
      const rdev = file?.isBlockDevice() === true ? file.rdev : undefined;
      return {
        name,
        fileId: `${info.major}:${info.minor}:${info.inode}`,
        rdev,
        offset: info.offset,
        sizeLimit: info.sizeLimit,
      };
    } catch {
      // fall back to sysfs
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
  if (fromSys === undefined) return undefined;
  const name = fromSys.replace(/ \(deleted\)$/, '');
  const file = statOf(name);
  if (file === undefined) {
    throw new NbdsnapError('BAD_ARGUMENT', `${path} is a loop device over ${fromSys}, which cannot be found`);
  }
  return {
    name,
    fileId: `${devName(file.dev)}:${file.ino}`,
    rdev: file.isBlockDevice() ? file.rdev : undefined,
    offset: Number(readSys(join(sys, 'loop', 'offset')) ?? '0'),
    sizeLimit: Number(readSys(join(sys, 'loop', 'sizelimit')) ?? '0'),
  };
}

/** A partition's extent in its whole disk, from sysfs (start and size are in 512-byte sectors). */
function partitionOf(sys: string): { parent: string; start: number; size: number } | undefined {
  if (!existsSync(join(sys, 'partition'))) return undefined;
  // sys is a symlink into /sys/devices/.../DISK/PART: the disk is the real parent directory.
  const parent = readSys(join(dirname(realpathSync(sys)), 'dev'));
  if (parent === undefined) return undefined;
  return {
    parent,
    start: Number(readSys(join(sys, 'start')) ?? '0') * 512,
    size: Number(readSys(join(sys, 'size')) ?? '0') * 512,
  };
}

/** A /dev node for 'MAJ:MIN', from sysfs's uevent DEVNAME. */
function devNode(id: string): string | undefined {
  const uevent = readSys(join(SYS_BLOCK, id, 'uevent'));
  const name = /^DEVNAME=(.*)$/m.exec(uevent ?? '')?.[1];
  if (name === undefined) return undefined;
  const path = `/dev/${name}`;
  return statOf(path)?.isBlockDevice() === true && devName(statOf(path)?.rdev ?? 0) === id ? path : undefined;
}

/** 'MAJ:MIN' as a glibc dev_t (small numbers). */
function makeDev(id: string): number {
  const [major = 0, minor = 0] = id.split(':').map(Number);
  return Number(
    (BigInt(minor) & 0xffn) |
      ((BigInt(major) & 0xfffn) << 8n) |
      ((BigInt(minor) & ~0xffn) << 12n) |
      ((BigInt(major) & ~0xfffn) << 32n),
  );
}

function readSys(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function statOf(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

/** The canonical path of an existing file (symlinks resolved), or the path as given. */
export function canonical(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}
