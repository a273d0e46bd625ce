/**
 * Ownership: what this server holds for its lifetime, and what it refuses to share.
 *
 * Claims. Every origin image opened for writing and every store range is claimed exclusively,
 * an origin served read-only (`-r`) shared, the way qemu locks its images: an open file
 * description lock (fcntl F_OFD_SETLK, native helper) on the bytes used, write for exclusive,
 * read for shared. A block device claimed exclusively is also opened with O_EXCL, which the
 * kernel refuses (EBUSY) while it is mounted or claimed by anyone else (mkfs refuses the same
 * way), and whose claim on a partition also covers its whole disk. A loop device's backing file
 * (or a partition's disk) is locked too, over the bytes the device maps, so a second name for
 * the same storage meets the same lock. A conflict is refused with one line naming the path and,
 * where /proc shows it, the holder.
 *
 * Inside this process, claims are kept in a registry by the storage they lock: a second claim by
 * the same user (same role and path, e.g. the store reopening its first range) shares the lock;
 * a claim by another user that overlaps is refused, since one server must never use the same
 * bytes as two things (an origin and a store range, two store ranges).
 *
 * Aliases. `refuseAliases` compares identities (identity.ts) before anything is opened: an
 * origin and a store range, two store ranges, or two origins of which one is writable, that share
 * bytes of the storage underneath are refused, whatever names they were given.
 */
import { closeSync, constants, fstatSync, openSync, statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { NbdsnapError } from '../errors.ts';
import { isRemote } from '../remote/uri.ts';
import { describeHolder, deviceUsers, lockHolders } from './holders.ts';
import {
  canonical,
  describeIdentity,
  devName,
  identify,
  overlaps,
  type StorageIdentity,
  type StorageLayer,
} from './identity.ts';
import { native } from './native.ts';

export { describeIdentity, identify, overlaps, type StorageIdentity } from './identity.ts';

/** Locks are taken only with the native helper; without it serve logs that nothing is locked. */
export const lockingAvailable = (): boolean => native?.ofdLock !== undefined;

export interface ClaimOptions {
  exclusive: boolean;
  /** Who claims, for messages and to let the same user claim again: 'origin', 'store', 'image'. */
  role: string;
  start?: number;
  length?: number;
  /** The (dev, ino) of the descriptor the caller opened: the path must still name it. */
  expect?: { dev: number; ino: number };
}

export interface Claim {
  readonly path: string;
  release(): void;
}

interface Held {
  owner: string;
  exclusive: boolean;
  start: number;
  end: number;
  refs: number;
}

/** One locked file (or block device node), by 'MAJ:MIN:INO': one descriptor for all its locks. */
interface LockedFile {
  fd: number;
  held: Held[];
}

const lockedFiles = new Map<string, LockedFile>();
/** Block devices opened with O_EXCL, by 'MAJ:MIN'. */
const exclusiveDevices = new Map<string, { fd: number; refs: number }>();

/**
 * Claim [start, start + length) of `path` (default: all of it) for this server's lifetime, or
 * throw BUSY naming the holder. Release with `release()` (closing does, at the latest, on exit).
 */
export function claimStorage(path: string, opts: ClaimOptions): Claim {
  if (isRemote(path)) return { path, release: () => undefined }; // nothing can be locked over NBD (README)
  const real = canonical(path);
  const start = opts.start ?? 0;
  const length = opts.length ?? Number.POSITIVE_INFINITY;
  const owner = `${opts.role} ${real}`;
  const st = statSync(real);
  if (opts.expect !== undefined && (st.dev !== opts.expect.dev || st.ino !== opts.expect.ino)) {
    throw new NbdsnapError('BUSY', `${path} was replaced while it was being opened`);
  }
  const id = identify(real, start, length);
  const undo: (() => void)[] = [];
  try {
    if (lockingAvailable()) {
      // The path itself (a file, or a block device node as qemu locks it), then every backing
      // file below it. Disks below a partition are covered by O_EXCL on the partition.
      const top = id.layers[0] as StorageLayer;
      undo.push(lockRange(`${devName(st.dev)}:${st.ino}`, real, top.start, top.end, opts.exclusive, owner, id));
      for (const layer of id.layers.slice(1)) {
        if (layer.kind !== 'file') continue;
        if (layer.path === '') {
          throw new NbdsnapError('BUSY', `cannot lock ${describeIdentity(id)}: its backing file cannot be opened`);
        }
        undo.push(lockRange(layer.id, layer.path, layer.start, layer.end, opts.exclusive, owner, id));
      }
    }
    // After the locks, which name a user of this process; O_EXCL cannot tell who holds it.
    if (st.isBlockDevice() && opts.exclusive) undo.push(openExclusive(real, st.rdev, id));
  } catch (err) {
    for (const u of undo.reverse()) u();
    throw err;
  }
  let released = false;
  return {
    path: real,
    release() {
      if (released) return;
      released = true;
      for (const u of undo.reverse()) u();
    },
  };
}

function lockRange(
  fileId: string,
  path: string,
  start: number,
  end: number,
  exclusive: boolean,
  owner: string,
  id: StorageIdentity,
): () => void {
  let file = lockedFiles.get(fileId);
  const mine = file?.held.find(
    (h) => h.owner === owner && h.exclusive === exclusive && h.start === start && h.end === end,
  );
  if (mine !== undefined) {
    mine.refs += 1;
    return () => unhold(fileId, mine);
  }
  for (const h of file?.held ?? []) {
    const shared = h.start < end && start < h.end;
    if (shared && (h.owner !== owner || h.exclusive !== exclusive) && (h.exclusive || exclusive)) {
      throw new NbdsnapError('BAD_ARGUMENT', `${describeIdentity(id)} overlaps the ${h.owner} of this server`);
    }
  }
  if (file === undefined) {
    file = { fd: openForLock(path, fileId, id, exclusive), held: [] };
    lockedFiles.set(fileId, file);
  }
  // Length 0 locks to the end of the file and beyond; an empty extent locks nothing.
  const length = end === Number.POSITIVE_INFINITY ? 0 : end - start;
  const errno = length === 0 && end !== Number.POSITIVE_INFINITY ? 0 : ofdLock(file.fd, exclusive, start, length);
  if (errno !== 0) {
    if (file.held.length === 0) forget(fileId);
    if (errno === osConstants.errno.EAGAIN || errno === osConstants.errno.EACCES) {
      const holders = lockHolders(fileId, start, end).map(describeHolder);
      const who = holders.length > 0 ? holders.join(', ') : 'held by another process';
      throw new NbdsnapError('BUSY', `${describeIdentity(id)} is in use: ${who}`);
    }
    throw new NbdsnapError('BUSY', `cannot lock ${describeIdentity(id)}: errno ${errno}`);
  }
  const held: Held = { owner, exclusive, start, end, refs: 1 };
  file.held.push(held);
  return () => unhold(fileId, held);
}

function ofdLock(fd: number, exclusive: boolean, start: number, length: number): number {
  return (native as NonNullable<typeof native>).ofdLock(fd, exclusive, start, length);
}

/**
 * Drop one use of a held extent. The byte-range lock itself stays until every use of the file in
 * this process is gone (then the descriptor is closed, which releases all its locks): unlocking
 * bytes another extent of ours still covers would release them too.
 */
function unhold(fileId: string, held: Held): void {
  const file = lockedFiles.get(fileId);
  if (file === undefined) return;
  held.refs -= 1;
  if (held.refs > 0) return;
  file.held = file.held.filter((h) => h !== held);
  if (file.held.length === 0) forget(fileId);
}

function forget(fileId: string): void {
  const file = lockedFiles.get(fileId);
  lockedFiles.delete(fileId);
  if (file !== undefined) closeSync(file.fd);
}

/** A descriptor of the file to hold locks on: read-write where allowed (write locks need it). */
function openForLock(path: string, fileId: string, id: StorageIdentity, exclusive: boolean): number {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_NONBLOCK);
  } catch (err) {
    // A writer must be able to write: its own open error says why not (EPERM, EROFS, EACCES).
    if (exclusive) throw err;
    try {
      fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    } catch (again) {
      throw new NbdsnapError('BUSY', `cannot lock ${describeIdentity(id)}: ${(again as Error).message}`);
    }
  }
  const st = fstatSync(fd);
  if (`${devName(st.dev)}:${st.ino}` !== fileId) {
    closeSync(fd);
    throw new NbdsnapError('BUSY', `cannot lock ${describeIdentity(id)}: ${path} is no longer the file in use`);
  }
  return fd;
}

/** O_EXCL on a block device: refused by the kernel while mounted or claimed elsewhere. */
function openExclusive(path: string, rdev: number, id: StorageIdentity): () => void {
  const key = devName(rdev);
  const known = exclusiveDevices.get(key);
  if (known !== undefined) {
    known.refs += 1;
  } else {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY | constants.O_EXCL | constants.O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EBUSY') throw new NbdsnapError('BUSY', `cannot open ${path}: ${(err as Error).message}`);
      const users = deviceUsers(rdev);
      const who = users.length > 0 ? users.join(', ') : 'claimed by another user';
      throw new NbdsnapError('BUSY', `${describeIdentity(id)} is in use: ${who}`);
    }
    exclusiveDevices.set(key, { fd, refs: 1 });
  }
  return () => {
    const e = exclusiveDevices.get(key);
    if (e === undefined) return;
    e.refs -= 1;
    if (e.refs === 0) {
      exclusiveDevices.delete(key);
      closeSync(e.fd);
    }
  };
}

export interface OriginUse {
  name: string;
  path?: string | undefined;
  readOnly: boolean;
}

export interface RangeUse {
  path: string;
  start: number;
  length: number;
}

/**
 * Refuse origins and store ranges of one server that share storage underneath: an origin and a
 * store range, two store ranges, or two origins unless both are read-only.
 */
export function refuseAliases(origins: OriginUse[], ranges: RangeUse[]): void {
  const uses: { what: string; id: StorageIdentity; readOnlyOrigin: boolean }[] = [];
  for (const o of origins) {
    // An origin that cannot be identified is left to its open, which says why in its own words.
    const id = o.path === undefined ? undefined : identifyOrUndefined(o.path);
    if (id !== undefined)
      uses.push({ what: `the origin device ${o.name} (${o.path})`, id, readOnlyOrigin: o.readOnly });
  }
  for (const r of ranges) {
    const what = `store range ${r.path}:${r.start / 512}+${r.length / 512}`;
    uses.push({ what, id: identify(r.path, r.start, r.length), readOnlyOrigin: false });
  }
  for (let i = 0; i < uses.length; i++) {
    for (let j = 0; j < i; j++) {
      const a = uses[j] as (typeof uses)[number];
      const b = uses[i] as (typeof uses)[number];
      if ((a.readOnlyOrigin && b.readOnlyOrigin) || !overlaps(a.id, b.id)) continue;
      throw new NbdsnapError('BAD_ARGUMENT', `${b.what} overlaps ${a.what}${via(b.id, a.id)}`);
    }
  }
}

function identifyOrUndefined(path: string): StorageIdentity | undefined {
  try {
    return identify(path);
  } catch {
    return undefined;
  }
}

/** ": /dev/loop0 is a loop device over /x.img" when a name hides the storage underneath. */
function via(a: StorageIdentity, b: StorageIdentity): string {
  const hidden = [a, b].filter((id) => id.layers.length > 1).map(describeIdentity);
  return hidden.length === 0 ? '' : `: ${hidden.join(', ')}`;
}
