/**
 * Writes one connection's replies to its socket, whole and in order.
 *
 * - Replies go through Node's stream, corked for the rest of the pass of the event loop, so the
 *   replies finished in one pass share one writev instead of one system call each.
 * - A pooled data buffer goes back to the pool once the kernel has it.
 * - `whenSent` tells when everything queued so far has been handed to the kernel (the memory
 *   budget gets a READ's bytes back then); at once when nothing is queued, without the empty
 *   write (a system call) that asking Node would take.
 *
 * Tried and dropped (measured, README): sending large replies from a thread of libuv's pool, and
 * sendfile(2) from the page cache on the event loop.
 */
import type { Socket } from 'node:net';
import * as pool from '../block/buffer-pool.ts';

const EMPTY = Buffer.alloc(0);

export class ReplyWriter {
  private readonly socket: Socket;
  private corked = false;

  constructor(socket: Socket) {
    this.socket = socket;
  }

  /** Queue one whole reply. */
  write(buffers: Buffer[]): void {
    if (this.socket.destroyed || buffers.length === 0) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      setImmediate(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    const last = buffers.length - 1;
    for (let i = 0; i < last; i++) this.socket.write(buffers[i] as Buffer);
    const data = buffers[last] as Buffer;
    if (data.length >= pool.MIN_POOLED) this.socket.write(data, () => pool.give(data));
    else this.socket.write(data);
  }

  /** `done` runs once everything queued so far has been handed to the kernel. */
  whenSent(done: () => void): void {
    if (this.socket.writableLength > 0 && !this.socket.destroyed) this.socket.write(EMPTY, done);
    else done();
  }

  /** Send what is corked now (before the socket changes hands, STARTTLS). */
  uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  }
}
