/**
 * Who holds a file or a block device, for the one line that refuses a conflict: the processes
 * whose locks cover the bytes (open file description locks are listed in /proc/PID/fdinfo/FD,
 * POSIX locks with their pid in /proc/locks), and for a block device its mount points, the
 * devices stacked on it (/sys/.../holders) and the processes that have it open.
 *
 * Only what this process may read is found; the lookup runs only after a refusal.
 */
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { devName } from './identity.ts';

export interface LockLine {
  type: string;
  write: boolean;
  /** The owning pid (-1 for an open file description lock: it has no owner process). */
  pid: number;
  /** 'MAJ:MIN:INO' in decimal. */
  fileId: string;
  start: number;
  /** Exclusive; Infinity for EOF. */
  end: number;
}

/**
 * One lock from /proc/locks or a `lock:` line of /proc/PID/fdinfo/FD, e.g.
 * `1: OFDLCK ADVISORY  WRITE -1 fe:00:2146322 0 EOF` (device numbers in hex, the end inclusive).
 * Waiters (`1: -> POSIX ...`) are not holders: undefined.
 */
export function parseLockLine(line: string): LockLine | undefined {
  const m =
    /^\s*(?:lock:\s*)?\d+:\s+(\S+)\s+\S+\s+(READ|WRITE)\s+(-?\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s+(\d+)\s+(\d+|EOF)\s*$/.exec(
      line,
    );
  if (m === null) return undefined;
  return {
    type: m[1] as string,
    write: m[2] === 'WRITE',
    pid: Number(m[3]),
    fileId: `${Number.parseInt(m[4] as string, 16)}:${Number.parseInt(m[5] as string, 16)}:${m[6]}`,
    start: Number(m[7]),
    end: m[8] === 'EOF' ? Number.POSITIVE_INFINITY : Number(m[8]) + 1,
  };
}

export interface Holder {
  pid: number;
  cmdline: string;
}

/** The processes (other than this one) holding a lock on bytes [start, end) of the file `fileId`. */
export function lockHolders(fileId: string, start: number, end: number): Holder[] {
  const pids = new Set<number>();
  const covers = (l: LockLine | undefined): l is LockLine =>
    l !== undefined && l.fileId === fileId && l.start < end && start < l.end;
  for (const line of readText('/proc/locks').split('\n')) {
    const l = parseLockLine(line);
    if (covers(l) && l.pid > 0) pids.add(l.pid);
  }
  for (const pid of processes()) {
    const dir = `/proc/${pid}/fdinfo`;
    for (const fd of list(dir)) {
      const info = readText(join(dir, fd));
      if (!info.includes('lock:')) continue;
      if (info.split('\n').some((line) => line.startsWith('lock:') && covers(parseLockLine(line)))) pids.add(pid);
    }
  }
  pids.delete(process.pid);
  return [...pids].map(holder);
}

/** Why a block device cannot be taken exclusively: its mounts, stacked devices, openers. */
export function deviceUsers(rdev: number): string[] {
  const id = devName(rdev);
  const out: string[] = [];
  for (const line of readText('/proc/self/mountinfo').split('\n')) {
    const f = line.split(' ');
    if (f[2] === id && f[4] !== undefined) out.push(`mounted at ${f[4]}`);
  }
  for (const h of list(`/sys/dev/block/${id}/holders`)) out.push(`used by ${h}`);
  const pids = new Set<number>();
  for (const pid of processes()) {
    if (pid === process.pid) continue;
    const dir = `/proc/${pid}/fd`;
    for (const fd of list(dir)) {
      try {
        if (!readlinkSync(join(dir, fd)).startsWith('/')) continue;
        const st = statSync(join(dir, fd));
        if (st.isBlockDevice() && st.rdev === rdev) pids.add(pid);
      } catch {
        // gone, or not ours to see
      }
    }
  }
  for (const pid of pids) out.push(describeHolder(holder(pid)));
  return out;
}

export function describeHolder(h: Holder): string {
  return h.cmdline === '' ? `held by pid ${h.pid}` : `held by pid ${h.pid} (${h.cmdline})`;
}

function holder(pid: number): Holder {
  let cmdline = readText(`/proc/${pid}/cmdline`).replaceAll('\0', ' ').trim();
  if (cmdline.length > 120) cmdline = `${cmdline.slice(0, 117)}...`;
  return { pid, cmdline };
}

function processes(): number[] {
  return list('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number);
}

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}
