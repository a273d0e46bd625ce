/**
 * The server side's incremental parser: frames what a client sends. No I/O: feed it bytes with
 * `push()`, then pull complete messages with `next()` until it returns undefined.
 *
 * The phase moves forward as the handshake does: the 4-byte client flags first, then options,
 * then (once the server has accepted NBD_OPT_GO or NBD_OPT_EXPORT_NAME and called
 * `startTransmission()`) requests. Pulling one message at a time lets the owner switch phase
 * between two messages that arrived in the same chunk.
 *
 * A WRITE payload can also be received in place: once its header is read (`awaiting` > 0), the
 * owner may hand the parser the payload's buffer (`receiveInto`), then put the bytes that follow
 * straight into `payloadSpace()` and report them with `payloadFilled(n)`; bytes pushed meanwhile
 * are copied into the buffer. Either way the request comes out of `next()` with `data` complete.
 *
 * Framing faults (a bad magic) throw a fatal NbdProtocolError: the stream cannot be resynced.
 * A WRITE whose payload exceeds `maxPayload` is not buffered: its payload is skipped as it
 * arrives and the request is yielded with `discarded: true`, so the server can answer it with an
 * error and the stream stays in sync.
 */

import { BufferList } from './buffer-list.ts';
import {
  CLIENT_FLAGS_SIZE,
  Command,
  NBD_EXTENDED_REQUEST_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REQUEST_MAGIC,
  OPTION_HEADER_SIZE,
  REQUEST_HEADER_SIZE,
} from './constants.ts';
import { NbdProtocolError } from './errors.ts';
import type { ClientMessage, RequestMessage } from './messages.ts';
import { readU64 } from './wire.ts';

export type ServerParserPhase = 'clientFlags' | 'options' | 'transmission';

export interface ServerParserOptions {
  /** Largest WRITE payload buffered; larger ones are discarded. Default 64 MiB. */
  maxPayload?: number;
  /** Largest option payload accepted before the client is treated as hostile. Default 64 KiB. */
  maxOptionLength?: number;
  /** Where multi-piece WRITE payloads are copied to (e.g. a buffer pool). Default: new buffers. */
  allocate?: (length: number) => Buffer;
  /** Start in a later phase (tests, and clients that skip the handshake). */
  phase?: ServerParserPhase;
}

export class ServerParser {
  private readonly input = new BufferList();
  private phaseNow: ServerParserPhase;
  private readonly maxPayload: number;
  private readonly allocate: ((length: number) => Buffer) | undefined;
  private readonly maxOptionLength: number;
  /** A request whose header has been read and whose WRITE payload is still arriving. */
  private pending: RequestMessage | undefined;
  private skipLeft = 0;
  /** The buffer the pending WRITE's payload is received into (`receiveInto`), and bytes in it. */
  private target: Buffer | undefined;
  private filled = 0;

  constructor(options: ServerParserOptions = {}) {
    this.phaseNow = options.phase ?? 'clientFlags';
    this.maxPayload = options.maxPayload ?? 64 * 1024 * 1024;
    this.allocate = options.allocate;
    this.maxOptionLength = options.maxOptionLength ?? 64 * 1024;
  }

  get phase(): ServerParserPhase {
    return this.phaseNow;
  }

  /** Bytes received but not yet yielded as messages. */
  get buffered(): number {
    return this.input.length + this.filled;
  }

  /**
   * The payload length of the WRITE whose header has been read and whose payload is still
   * arriving (0 when none, or when it is being skipped): the bytes the owner will hold once it is
   * complete, so that it can reserve them (or stop reading) before they are read.
   */
  get awaiting(): number {
    return this.pending !== undefined && this.skipLeft === 0 ? this.pending.length : 0;
  }

  /**
   * Bytes from the client. `transient`: the caller will reuse `chunk` (a read buffer), so
   * nothing yielded refers to it and `detach()` must be called before it is reused.
   */
  push(chunk: Buffer, transient = false): void {
    const target = this.target;
    if (target !== undefined) {
      // The payload being received in place: its bytes go to its buffer, the rest is queued.
      const k = Math.min(chunk.length, target.length - this.filled);
      chunk.copy(target, this.filled, 0, k);
      this.filled += k;
      if (k === chunk.length) return;
      chunk = chunk.subarray(k);
    }
    this.input.push(chunk, transient);
  }

  /** Copy whatever is still queued from transient chunks, so that the caller may reuse them. */
  detach(): number {
    return this.input.detach();
  }

  /**
   * Receive the payload of the WRITE being awaited (`awaiting` > 0) into `buffer` (exactly its
   * length): the payload bytes already queued are copied into it. Returns the space left, where
   * the owner may put the next bytes itself (then `payloadFilled`).
   */
  receiveInto(buffer: Buffer): Buffer {
    const pending = this.pending;
    if (pending === undefined || this.skipLeft > 0 || this.target !== undefined || buffer.length !== pending.length) {
      throw new RangeError('receiveInto: no WRITE payload awaited, or a buffer of the wrong length');
    }
    // Fewer bytes than the payload are queued (else next() would have yielded the request).
    const queued = this.input.length;
    this.input.copyOut(queued, buffer);
    this.input.skip(queued);
    this.target = buffer;
    this.filled = queued;
    return buffer.subarray(queued);
  }

  /** Where the next payload bytes go when received in place (empty when none is). */
  payloadSpace(): Buffer | undefined {
    return this.target?.subarray(this.filled);
  }

  /** `n` bytes were put at the start of `payloadSpace()`. */
  payloadFilled(n: number): void {
    const target = this.target;
    if (target === undefined || n < 0 || this.filled + n > target.length) {
      throw new RangeError('payloadFilled: more bytes than the payload space');
    }
    this.filled += n;
  }

  /** Called by the owner once the handshake has ended successfully. */
  startTransmission(): void {
    this.phaseNow = 'transmission';
  }

  next(): ClientMessage | undefined {
    switch (this.phaseNow) {
      case 'clientFlags':
        return this.nextClientFlags();
      case 'options':
        return this.nextOption();
      case 'transmission':
        return this.nextRequest();
    }
  }

  private nextClientFlags(): ClientMessage | undefined {
    if (this.input.length < CLIENT_FLAGS_SIZE) return undefined;
    const flags = this.input.take(CLIENT_FLAGS_SIZE).readUInt32BE(0);
    this.phaseNow = 'options';
    return { kind: 'clientFlags', flags };
  }

  private nextOption(): ClientMessage | undefined {
    if (this.input.length < OPTION_HEADER_SIZE) return undefined;
    const header = this.input.peek(OPTION_HEADER_SIZE);
    if (header.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) {
      throw new NbdProtocolError('BAD_MAGIC', 'option does not start with IHAVEOPT');
    }
    const option = header.readUInt32BE(8);
    const length = header.readUInt32BE(12);
    if (length > this.maxOptionLength) {
      throw new NbdProtocolError('TOO_LARGE', `option ${option} has a ${length}-byte payload`);
    }
    if (this.input.length < OPTION_HEADER_SIZE + length) return undefined;
    this.input.skip(OPTION_HEADER_SIZE);
    // Copy: option payloads are small and may outlive the socket chunk they arrived in.
    const data = Buffer.from(this.input.take(length));
    return { kind: 'option', option, data };
  }

  private nextRequest(): ClientMessage | undefined {
    if (this.skipLeft > 0) {
      this.skipLeft -= this.input.skip(this.skipLeft);
      if (this.skipLeft > 0) return undefined;
      const done = this.pending as RequestMessage;
      this.pending = undefined;
      return done;
    }
    if (this.pending !== undefined) {
      const done = this.pending;
      if (this.target !== undefined) {
        if (this.filled < done.length) return undefined;
        done.data = this.target;
        this.target = undefined;
        this.filled = 0;
      } else {
        if (this.input.length < done.length) return undefined;
        done.data = this.input.takeOwned(done.length, this.allocate);
      }
      this.pending = undefined;
      return done;
    }
    if (this.input.length < REQUEST_HEADER_SIZE) return undefined;
    const h = this.input.take(REQUEST_HEADER_SIZE);
    const magic = h.readUInt32BE(0);
    if (magic !== NBD_REQUEST_MAGIC) {
      const what = magic === NBD_EXTENDED_REQUEST_MAGIC ? 'an extended-header request' : 'a bad magic';
      throw new NbdProtocolError('BAD_MAGIC', `request with ${what} (0x${magic.toString(16)})`);
    }
    const request: RequestMessage = {
      kind: 'request',
      flags: h.readUInt16BE(4),
      type: h.readUInt16BE(6),
      cookie: h.readBigUInt64BE(8),
      offset: readU64(h, 16),
      length: h.readUInt32BE(24),
    };
    if (request.type !== Command.WRITE || request.length === 0) {
      if (request.type === Command.WRITE) request.data = Buffer.alloc(0);
      return request;
    }
    if (request.length > this.maxPayload) {
      request.discarded = true;
      this.pending = request;
      this.skipLeft = request.length;
      return this.nextRequest();
    }
    this.pending = request;
    return this.nextRequest();
  }
}
