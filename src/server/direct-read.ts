/**
 * Socket reads into buffers the connection chooses, instead of a fresh 64 KiB buffer per read.
 *
 * By default Node allocates a new buffer for every read of a socket, so a WRITE payload arrives
 * in 64 KiB pieces that must be copied into one buffer, and the pieces are garbage to collect
 * (the main cost of receiving data, measured). Node can read into a caller's buffer instead (the
 * `onread` option of `net.connect`, with a function that picks the buffer of each next read),
 * but only for sockets it connects, not for accepted ones. This module turns the same mechanism
 * on for an accepted plain socket: the connection then reads a WRITE's payload straight into the
 * payload's own buffer, in reads as large as the payload, and headers into one reused buffer.
 *
 * It relies on Node's internals (the `useUserBuffer` method of the socket's handle and three
 * symbols of net.Socket, found by their names), so it checks for them and reports false when
 * they are missing: the caller then keeps reading 'data' events. Not for TLS sockets.
 */
import { Socket } from 'node:net';
import * as pool from '../block/buffer-pool.ts';
import { REQUEST_HEADER_SIZE, type ServerParser } from '../nbd-protocol/index.ts';
import type { Reservations } from './reservations.ts';

/** The reused buffer that headers and small requests are read into (Node's own read size). */
const READ_BUFFER = 64 * 1024;

export interface ReadTargets {
  /** The buffer the next read goes into (called after every read, and once at the start). */
  next(): Buffer;
  /** One read put `n` (> 0) bytes at the start of `buffer`, the buffer `next()` last returned. */
  filled(buffer: Buffer, n: number): void;
}

interface OnreadSymbols {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

let symbols: OnreadSymbols | null | undefined;

/** The symbols Node keeps `onread` under, read off a socket built with it (no handle, no I/O). */
function findSymbols(): OnreadSymbols | null {
  try {
    // `onread` is typed for net.connect only; the constructor takes it too.
    const options = { onread: { buffer: () => Buffer.alloc(1), callback: () => true } };
    const probe = new Socket(options as ConstructorParameters<typeof Socket>[0]);
    const own = Object.getOwnPropertySymbols(probe);
    const named = (name: string) => own.find((s) => s.description === name);
    const found = { buffer: named('kBuffer'), callback: named('kBufferCb'), generator: named('kBufferGen') };
    probe.destroy();
    const { buffer, callback, generator } = found;
    if (buffer === undefined || callback === undefined || generator === undefined) return null;
    return { buffer, callback, generator };
  } catch {
    return null;
  }
}

type Handle = { useUserBuffer?: (b: Buffer) => void } | null | undefined;

/**
 * Switch `socket` to reads into `targets` from its next read on; false (and nothing changed) if
 * this Node cannot, the socket has no handle, or data is already waiting in its stream buffer.
 */
export function readInto(socket: Socket, targets: ReadTargets): boolean {
  symbols ??= findSymbols();
  const handle = (socket as unknown as { _handle: Handle })._handle;
  if (symbols === null || typeof handle?.useUserBuffer !== 'function') return false;
  if (socket.readableLength > 0 || socket.destroyed) return false;
  const first = targets.next();
  const s = socket as unknown as Record<symbol, unknown>;
  s[symbols.buffer] = first;
  s[symbols.generator] = () => targets.next();
  s[symbols.callback] = (n: number, buffer: Buffer) => {
    targets.filled(buffer, n);
  };
  handle.useUserBuffer(first);
  return true;
}

/**
 * Where a connection's reads go: the rest of the WRITE payload being received, once its bytes are
 * reserved in the budget (never before: reading is paused while a reservation waits); right after
 * such a payload, one request header alone (the next request is likely another large WRITE, whose
 * payload should not land in the shared buffer and be copied); else the reused read buffer, whose
 * leftovers the parser copies (`detach`) before the next read overwrites it.
 */
export class PayloadReads implements ReadTargets {
  private readonly parser: ServerParser;
  private readonly share: Reservations;
  /** Parse and dispatch whatever the bytes completed. */
  private readonly pump: () => void;
  /** False once the connection reads no more (after DISC): bytes are then dropped, not queued. */
  private readonly active: () => boolean;
  private readBuffer: Buffer | undefined;
  /** The first bytes of `readBuffer`, for a read of one request header. */
  private headerBuffer: Buffer | undefined;
  /** A WRITE payload was just read into its own buffer. */
  private afterPayload = false;

  constructor(parser: ServerParser, share: Reservations, pump: () => void, active: () => boolean) {
    this.parser = parser;
    this.share = share;
    this.pump = pump;
    this.active = active;
  }

  next(): Buffer {
    const space = this.parser.payloadSpace() ?? this.receivePayload();
    if (space !== undefined && space.length > 0) return space;
    this.readBuffer ??= Buffer.allocUnsafeSlow(READ_BUFFER);
    if (this.afterPayload) {
      this.afterPayload = false;
      this.headerBuffer ??= this.readBuffer.subarray(0, REQUEST_HEADER_SIZE);
      return this.headerBuffer;
    }
    return this.readBuffer;
  }

  filled(buffer: Buffer, n: number): void {
    if (!this.active()) return;
    if (buffer === this.readBuffer || buffer === this.headerBuffer) {
      this.parser.push(buffer.subarray(0, n), true);
      this.pump();
      this.receivePayload(); // the payload bytes of this read go to their buffer, not to a copy
      this.parser.detach(); // what is left of the read buffer is copied: it is read into again
    } else {
      this.parser.payloadFilled(n);
      this.afterPayload = this.parser.payloadSpace()?.length === 0;
      this.pump();
    }
  }

  /** Once the awaited WRITE payload is reserved: receive it into a buffer of its own. */
  private receivePayload(): Buffer | undefined {
    const awaiting = this.parser.awaiting;
    if (this.share.payload === 0 || awaiting === 0) return undefined;
    if (this.parser.payloadSpace() !== undefined) return undefined; // received, not yet taken
    return this.parser.receiveInto(pool.take(awaiting));
  }
}
