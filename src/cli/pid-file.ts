/**
 * `--pid-file`: checked before the server opens anything, written once it accepts connections.
 * Never through a symlink and never half-written: a new file is created next to the target
 * (O_CREAT | O_EXCL | O_NOFOLLOW, mode 0644), synced, and renamed over it; rename replaces a
 * symlink itself, not the file it points to.
 */
import {
  accessSync,
  closeSync,
  constants,
  fsyncSync,
  lstatSync,
  openSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { NbdsnapError } from '../errors.ts';

/** Refuse at start, in one line, a pid file that could not be written. */
export function checkPidFile(path: string): void {
  const dir = dirname(path);
  try {
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' ? 'does not exist' : code === 'EROFS' ? 'is on a read-only file system' : 'is not writable';
    throw new NbdsnapError('BAD_ARGUMENT', `cannot write the pid file ${path}: directory ${dir} ${why}`);
  }
  let isDir = false;
  try {
    isDir = lstatSync(path).isDirectory();
  } catch {
    // absent: it will be created
  }
  if (isDir) throw new NbdsnapError('BAD_ARGUMENT', `cannot write the pid file ${path}: it is a directory`);
}

const NEW_FILE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** A new file; a temporary file left by a crashed process of the same pid is removed first. */
function createNew(path: string): number {
  try {
    return openSync(path, NEW_FILE, 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    unlinkSync(path); // removes a symlink itself, never its target
    return openSync(path, NEW_FILE, 0o644);
  }
}

export function writePidFile(path: string, pid: number): void {
  const temp = join(dirname(path), `.${basename(path)}.${pid}.tmp`);
  let fd: number | undefined;
  try {
    fd = createNew(temp);
    writeSync(fd, `${pid}\n`);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(temp, path);
  } catch (err) {
    if (fd !== undefined) closeSync(fd);
    try {
      unlinkSync(temp);
    } catch {
      // not created, or already renamed
    }
    throw new NbdsnapError('BAD_ARGUMENT', `cannot write the pid file ${path}: ${(err as Error).message}`);
  }
  // The rename is durable once the directory is.
  try {
    const dirFd = openSync(dirname(path), constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  } catch {
    // a pid file is a hint for process managers: the file is complete either way
  }
}
