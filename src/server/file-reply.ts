/**
 * READ replies sent from the file itself: the reply header, then the data by sendfile(2) straight
 * from the page cache to the client's socket (native sendReply, src/native/sendfile.c). Measured
 * on 1 MiB reads: the file-to-buffer and buffer-to-socket copies were the main thread's largest
 * cost; with sendfile the kernel hands page-cache pages to the socket instead.
 *
 * Used only when it cannot change what the client receives or its order:
 * - a plain socket (not TLS) whose descriptor is known, and the native helper;
 * - a device that names a descriptor for the range (`BlockDevice.directFd`: the file backend, and
 *   layers that read through unchanged);
 * - nothing of this connection waiting in Node's write queue (else the reply would overtake it);
 * - the whole range in the page cache (checked by the helper with cachestat): the event loop
 *   must not wait for the disk. Otherwise nothing is sent and the caller reads the usual way.
 * When the socket's buffer fills up midway, the rest of the reply is read at once (it was just
 * found cached) and queued before anything else. If that read fails, part of a successful reply
 * is already on the wire: the connection is dropped, so the client never takes wrong bytes.
 */
import { readSync } from 'node:fs';
import type { Socket } from 'node:net';
import * as pool from '../block/buffer-pool.ts';
import { native } from '../block/native.ts';

/** Replies shorter than this are read into a buffer: for them the extra system calls cost more. */
export const FILE_REPLY_MIN = 64 * 1024;

/** Sends one READ reply from a file; false when it sent nothing (the caller reads instead). */
export type FileReplySink = (header: Buffer, fd: number, offset: number, length: number) => boolean;

/** The socket's descriptor, when replies can be sent from files on it; else undefined. */
export function fileReplySocket(socket: Socket): number | undefined {
  if (native?.sendReply === undefined || (socket as { encrypted?: boolean }).encrypted === true) return undefined;
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * Send `header` and [offset, offset + length) of `fd` on `socket` (descriptor `sock`). `queue`
 * writes buffers in order behind anything sent (the connection's reply writer) and calls `sent`
 * once the kernel has them; `drop` ends the connection when a reply cannot be completed.
 */
export function sendFileReply(
  socket: Socket,
  sock: number,
  reply: { header: Buffer; fd: number; offset: number; length: number },
  queue: (buffers: Buffer[], sent: () => void) => void,
  drop: (err: unknown) => void,
): boolean {
  const sendReply = native?.sendReply;
  if (sendReply === undefined || socket.destroyed || socket.writableLength > 0) return false;
  const { header, fd, offset, length } = reply;
  const sent = sendReply(sock, header, fd, offset, length);
  if (sent <= 0) return false; // not cached, or the socket is full: nothing sent
  if (sent === header.length + length) return true;
  const rest: Buffer[] = [];
  if (sent < header.length) rest.push(header.subarray(sent));
  const done = Math.max(0, sent - header.length);
  // A buffer of the reply's own size (the pool reuses those), filled and sent from `done` on.
  const whole = pool.take(length);
  const data = whole.subarray(done);
  try {
    readAll(fd, data, offset + done);
  } catch (err) {
    pool.give(whole);
    drop(err);
    return true;
  }
  rest.push(data);
  queue(rest, () => pool.give(whole));
  return true;
}

/** Fill `buf` from `offset` now (from the page cache when it can), zeroes past the end of file. */
function readAll(fd: number, buf: Buffer, offset: number): void {
  let done = native?.readNowait(fd, buf, offset) ?? -1;
  if (done < 0) done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, offset + done);
    if (n === 0) {
      buf.fill(0, done);
      return;
    }
    done += n;
  }
}
