/**
 * A pool of large I/O buffers (READ replies, WRITE payloads). A fresh multi-megabyte buffer
 * costs a page fault per 4 KiB on first touch and GC work when dropped, which measured as the
 * main cost of sequential I/O; reusing buffers avoids both. Only buffers handed out by `take()`
 * are ever reused: `give()` ignores anything else, so code that does not return a buffer only
 * leaves it to the garbage collector. A buffer must be given back only when nothing refers to it.
 */
import { native } from './native.ts';

/**
 * From 4 KiB (64 KiB before): a 4 KiB WRITE payload or READ reply was a fresh ArrayBuffer each,
 * external memory that set off garbage collections in 4 KiB random I/O (measured).
 */
export const MIN_POOLED = 4096;
const MAX_POOLED = 64 * 1024 * 1024;
/**
 * Bytes kept idle in the pool at most. Enough to take back what the requests in flight hold
 * (nbdcopy: 4 connections of 8 MiB each, plus replies queued on the sockets): with 16 MiB the
 * buffers given back in a burst beyond it became garbage and were allocated again, which cost
 * major GCs and 40 MiB of peak RSS in the bench's io section (measured: 149-157 MiB peak at
 * 16 MiB, 111 MiB at 48 MiB, and half the CPU per GiB of nbdcopy reads and writes).
 */
const MAX_IDLE_BYTES = 48 * 1024 * 1024;

/**
 * Buffers from 64 KiB up start on a page boundary (pageOffset, src/native/read-crc.c): glibc puts
 * large ones 16 bytes past a page, where the kernel's copy of a read from the page cache runs 7-8
 * times slower on this machine's CPU (4K aliasing of `rep movsb`, measured).
 */
const ALIGN_MIN = 64 * 1024;
const pageOffset = native?.pageOffset;

function fresh(length: number): Buffer {
  if (length < ALIGN_MIN || pageOffset === undefined) return Buffer.allocUnsafeSlow(length);
  const b = Buffer.allocUnsafeSlow(length + 4096);
  const skip = (4096 - pageOffset(b)) % 4096;
  return b.subarray(skip, skip + length);
}

const free = new Map<number, Buffer[]>();
const ours = new WeakSet<Buffer>();
const idle = new WeakSet<Buffer>();
let idleBytes = 0;

/** A buffer of exactly `length` bytes (contents undefined). */
export function take(length: number): Buffer {
  if (length < MIN_POOLED || length > MAX_POOLED) return Buffer.allocUnsafe(length);
  const list = free.get(length);
  const reused = list?.pop();
  if (reused !== undefined) {
    idle.delete(reused);
    idleBytes -= length;
    return reused;
  }
  const b = fresh(length);
  ours.add(b);
  return b;
}

/** Return a buffer from `take()` for reuse; anything else is ignored. */
export function give(b: Buffer | undefined): void {
  if (b === undefined || !ours.has(b) || idle.has(b)) return;
  if (held.has(b)) {
    returned.add(b); // reused once its holder releases it
    return;
  }
  if (idleBytes + b.length > MAX_IDLE_BYTES && !makeRoom(b.length)) return;
  let list = free.get(b.length);
  if (list === undefined) list = [];
  else free.delete(b.length); // set again below, last: `free` is ordered by the latest give
  idle.add(b); // given back twice: kept once
  list.push(b);
  free.set(b.length, list);
  idleBytes += b.length;
}

/**
 * Drop idle buffers of the lengths given back longest ago (not `length`) until `length` fits.
 * Otherwise a pool filled by one workload's size (nbdcopy's 256 KiB) stays full of it, and the
 * next workload's buffers (1 MiB) all became garbage and fresh pages: 1.2 -> 2.9 CPU s/GiB of
 * proxied 1 MiB writes after an nbdcopy (measured).
 */
function makeRoom(length: number): boolean {
  for (const [len, list] of free) {
    if (len === length) continue;
    while (list.length > 0 && idleBytes + length > MAX_IDLE_BYTES) {
      idle.delete(list.pop() as Buffer);
      idleBytes -= len;
    }
    if (list.length === 0) free.delete(len);
    if (idleBytes + length <= MAX_IDLE_BYTES) return true;
  }
  return false;
}

/*
 * Holding: a device that keeps a reference to a write's payload past the write's answer (a remote
 * device's replay log, src/remote) holds it instead of copying it. Its owner gives it back as
 * usual once the write is answered; a held buffer given back is reused only after `release()`.
 * This relies on the pool's rule: the owner of a buffer from `take()` does not write into it after
 * a write of it was answered, but gives it back (or drops it).
 */
const held = new WeakSet<Buffer>();
const returned = new WeakSet<Buffer>();

/**
 * Keep a buffer from `take()` out of reuse until `release(b)`, whoever gives it back meanwhile.
 * False (nothing held) for any other buffer (a slice, a small one, one not pooled) or one already
 * held: the caller must then copy what it keeps.
 */
export function hold(b: Buffer): boolean {
  if (!ours.has(b) || idle.has(b) || held.has(b)) return false;
  held.add(b);
  return true;
}

/** The holder is done with `b`: back to the pool if its owner gave it back meanwhile. */
export function release(b: Buffer): void {
  if (!held.delete(b)) return;
  if (returned.delete(b)) give(b);
}
