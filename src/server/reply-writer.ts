/**
 * Writes one connection's replies to its socket, whole and in order.
 *
 * - Small replies go through Node's stream, corked for the rest of the pass of the event loop, so
 *   the replies finished in one pass share one writev instead of one system call each.
 * - Large replies (512 KiB and more of READ data) on a plain socket are handed to a thread of libuv's pool, which
 *   sends them (native sendAsync, reply-send.c): the copy into the socket was the event loop's
 *   largest cost in sequential reads (measured), and it now runs beside the loop. Only when
 *   nothing of the connection waits in Node's stream; while such a send is in flight, later
 *   replies wait here, in order. A send never waits for room: what did not fit goes on through
 *   Node's stream, before anything else (so a client that does not read holds no pool thread).
 *   The pool sends use a duplicate of the socket's descriptor, closed after the last of them, so
 *   a connection closed meanwhile can never have its descriptor number reused under a send.
 * - `whenSent` tells when everything queued so far has been handed to the kernel (the memory
 *   budget gets a READ's bytes back then).
 */
import { closeSync } from 'node:fs';
import type { Socket } from 'node:net';
import * as pool from '../block/buffer-pool.ts';
import { native } from '../block/native.ts';

/**
 * Replies at least this large are sent from the thread pool. Measured (server CPU per GiB, A/B on
 * the same loaded machine): 1 MiB replies cost the event loop 20-35% less and no more in total,
 * but nbdcopy's 256 KiB replies cost 80% more CPU in total with the same loop time (a hand-off
 * per reply, and the pool thread and the loop contending for the socket), so they stay on the loop.
 */
const POOL_SEND_MIN = 512 * 1024;
/** At most this many buffers in one pool send (the native helper's limit). */
const POOL_SEND_BUFFERS = 16;
const EMPTY = Buffer.alloc(0);

interface Held {
  buffers: Buffer[];
  sent: (() => void) | undefined;
}

export class ReplyWriter {
  private readonly socket: Socket;
  /** Duplicate of the socket's descriptor for pool sends; -1 when they are not used. */
  private fd = -1;
  /** A pool send is in flight: replies wait in `held`. */
  private busy = false;
  private held: Held[] = [];
  private corked = false;
  private closed = false;
  private readonly sendAsync = native?.sendAsync;
  /** Waiting for the pool send in flight (and the replies held behind it) to be passed on. */
  private settledWaiters: (() => void)[] = [];

  constructor(socket: Socket) {
    this.socket = socket;
  }

  /** Send large replies from the thread pool from now on (plain sockets only, not TLS). */
  usePoolSends(): void {
    const handleFd = (this.socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
    if (this.fd >= 0 || this.closed || this.sendAsync === undefined || native?.dupFd === undefined) return;
    if (typeof handleFd === 'number' && handleFd >= 0) this.fd = native.dupFd(handleFd);
  }

  /** Queue one whole reply; `sent` runs once it is handed to the kernel. */
  write(buffers: Buffer[], sent?: () => void): void {
    if (this.socket.destroyed || buffers.length === 0) return;
    const last = buffers[buffers.length - 1] as Buffer;
    // By default a pooled data buffer goes back to the pool once the kernel has it.
    const done = sent ?? (last.length >= pool.MIN_POOLED ? () => pool.give(last) : undefined);
    if (this.busy) {
      this.held.push({ buffers, sent: done });
      return;
    }
    const sendAsync = this.sendAsync;
    if (sendAsync !== undefined && this.fd >= 0 && buffers.length <= POOL_SEND_BUFFERS && this.socket.writableLength === 0) {
      let bytes = 0;
      for (const b of buffers) bytes += b.length;
      if (bytes >= POOL_SEND_MIN) {
        this.busy = true;
        sendAsync(this.fd, buffers, (n) => this.poolSent(buffers, done, n));
        return;
      }
    }
    this.queue(buffers, done);
  }

  /** `done` runs once everything queued so far has been handed to the kernel. */
  whenSent(done: () => void): void {
    if (this.busy) this.held.push({ buffers: [], sent: done });
    else if (this.socket.writableLength > 0 && !this.socket.destroyed) this.socket.write(EMPTY, done);
    else done();
  }

  /** Resolves once no pool send is in flight: every reply so far is in Node's stream or sent. */
  settled(): Promise<void> {
    if (!this.busy) return Promise.resolve();
    return new Promise((resolve) => this.settledWaiters.push(resolve));
  }

  /** Send what is corked now (before the socket changes hands, STARTTLS). */
  uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  }

  /** The socket closed: the descriptor duplicate goes once no pool send uses it. */
  close(): void {
    this.closed = true;
    this.held = [];
    if (!this.busy) this.closeFd();
    this.wakeSettled();
  }

  private queue(buffers: Buffer[], sent: (() => void) | undefined): void {
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
    if (sent === undefined) this.socket.write(buffers[last] as Buffer);
    else this.socket.write(buffers[last] as Buffer, sent);
  }

  /** A pool send is over, `n` bytes of `buffers` sent: the rest through Node, then what waited. */
  private poolSent(buffers: Buffer[], sent: (() => void) | undefined, n: number): void {
    this.busy = false;
    if (this.closed || this.socket.destroyed) {
      this.closeFd();
      this.wakeSettled();
      return;
    }
    let skip = n;
    const rest: Buffer[] = [];
    for (const b of buffers) {
      if (skip >= b.length) skip -= b.length;
      else {
        rest.push(skip > 0 ? b.subarray(skip) : b);
        skip = 0;
      }
    }
    if (rest.length > 0) this.queue(rest, sent);
    else sent?.();
    while (!this.busy && this.held.length > 0) {
      const h = this.held.shift() as Held;
      if (h.buffers.length === 0) this.whenSent(h.sent as () => void);
      else this.write(h.buffers, h.sent);
    }
    if (!this.busy) this.wakeSettled();
  }

  private wakeSettled(): void {
    const waiters = this.settledWaiters;
    if (waiters.length === 0) return;
    this.settledWaiters = [];
    for (const w of waiters) w();
  }

  private closeFd(): void {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    try {
      closeSync(fd);
    } catch {
      // already gone: nothing to release
    }
  }
}
