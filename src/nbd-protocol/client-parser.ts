/**
 * The client side's incremental parser: frames what a server sends. No I/O: `push()` bytes,
 * pull messages with `next()`.
 *
 * Phases: the 18-byte greeting, then option replies; after sending NBD_OPT_EXPORT_NAME the owner
 * calls `expectExportNameReply()` (that reply has no framing of its own), and once the handshake
 * is over `startTransmission()`. A simple reply carries data only if it answers a READ and has
 * no error, which the framing cannot tell: the owner supplies `readLength(cookie)`, the length
 * of the READ it sent with that cookie (undefined for other commands).
 */

import { BufferList } from './buffer-list.ts';
import {
  CHUNK_HEADER_SIZE,
  EXPORT_NAME_REPLY_PADDING,
  GREETING_SIZE,
  NBD_CLISERV_MAGIC,
  NBD_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  OPTION_REPLY_HEADER_SIZE,
  SIMPLE_REPLY_SIZE,
} from './constants.ts';
import { NbdProtocolError } from './errors.ts';
import type { ServerMessage } from './messages.ts';
import { readU64 } from './wire.ts';

export type ClientParserPhase = 'greeting' | 'options' | 'exportName' | 'transmission';

export interface ClientParserOptions {
  /** Length of the data a successful simple reply to this cookie carries (READs only). */
  readLength?: (cookie: bigint) => number | undefined;
  /** Largest reply or chunk payload accepted. Default 64 MiB + 64. */
  maxPayload?: number;
  phase?: ClientParserPhase;
}

export class ClientParser {
  private readonly input = new BufferList();
  private phaseNow: ClientParserPhase;
  private noZeroes = false;
  private readonly readLength: (cookie: bigint) => number | undefined;
  private readonly maxPayload: number;

  constructor(options: ClientParserOptions = {}) {
    this.phaseNow = options.phase ?? 'greeting';
    this.readLength = options.readLength ?? (() => undefined);
    this.maxPayload = options.maxPayload ?? 64 * 1024 * 1024 + 64;
  }

  get phase(): ClientParserPhase {
    return this.phaseNow;
  }

  push(chunk: Buffer): void {
    this.input.push(chunk);
  }

  /** After sending NBD_OPT_EXPORT_NAME; `noZeroes` if both sides agreed to NO_ZEROES. */
  expectExportNameReply(noZeroes: boolean): void {
    this.phaseNow = 'exportName';
    this.noZeroes = noZeroes;
  }

  startTransmission(): void {
    this.phaseNow = 'transmission';
  }

  next(): ServerMessage | undefined {
    switch (this.phaseNow) {
      case 'greeting':
        return this.nextGreeting();
      case 'options':
        return this.nextOptionReply();
      case 'exportName':
        return this.nextExportNameReply();
      case 'transmission':
        return this.nextReply();
    }
  }

  private nextGreeting(): ServerMessage | undefined {
    if (this.input.length < GREETING_SIZE) return undefined;
    const g = this.input.peek(16);
    if (g.readBigUInt64BE(0) !== NBD_MAGIC) {
      throw new NbdProtocolError('BAD_MAGIC', 'server greeting does not start with NBDMAGIC');
    }
    const second = g.readBigUInt64BE(8);
    if (second === NBD_CLISERV_MAGIC) {
      throw new NbdProtocolError('OLDSTYLE', 'server uses the oldstyle handshake (not supported)');
    }
    if (second !== NBD_OPTS_MAGIC) {
      throw new NbdProtocolError('BAD_MAGIC', 'server greeting has no IHAVEOPT');
    }
    const handshakeFlags = this.input.take(GREETING_SIZE).readUInt16BE(16);
    this.phaseNow = 'options';
    return { kind: 'greeting', handshakeFlags };
  }

  private nextOptionReply(): ServerMessage | undefined {
    if (this.input.length < OPTION_REPLY_HEADER_SIZE) return undefined;
    const h = this.input.peek(OPTION_REPLY_HEADER_SIZE);
    if (h.readBigUInt64BE(0) !== NBD_REP_MAGIC) {
      throw new NbdProtocolError('BAD_MAGIC', 'option reply with a bad magic');
    }
    const length = h.readUInt32BE(16);
    if (length > this.maxPayload) {
      throw new NbdProtocolError('TOO_LARGE', `option reply of ${length} bytes`);
    }
    if (this.input.length < OPTION_REPLY_HEADER_SIZE + length) return undefined;
    const option = h.readUInt32BE(8);
    const type = h.readUInt32BE(12);
    this.input.skip(OPTION_REPLY_HEADER_SIZE);
    return { kind: 'optionReply', option, type, data: Buffer.from(this.input.take(length)) };
  }

  private nextExportNameReply(): ServerMessage | undefined {
    const size = 10 + (this.noZeroes ? 0 : EXPORT_NAME_REPLY_PADDING);
    if (this.input.length < size) return undefined;
    const b = this.input.take(size);
    this.phaseNow = 'transmission';
    return { kind: 'exportNameReply', size: readU64(b, 0), transmissionFlags: b.readUInt16BE(8) };
  }

  private nextReply(): ServerMessage | undefined {
    if (this.input.length < 4) return undefined;
    const magic = this.input.peek(4).readUInt32BE(0);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) return this.nextSimpleReply();
    if (magic === NBD_STRUCTURED_REPLY_MAGIC) return this.nextChunk();
    throw new NbdProtocolError('BAD_MAGIC', `reply with a bad magic (0x${magic.toString(16)})`);
  }

  private nextSimpleReply(): ServerMessage | undefined {
    if (this.input.length < SIMPLE_REPLY_SIZE) return undefined;
    const h = this.input.peek(SIMPLE_REPLY_SIZE);
    const error = h.readUInt32BE(4);
    const cookie = h.readBigUInt64BE(8);
    const readLength = error === 0 ? this.readLength(cookie) : undefined;
    if (this.input.length < SIMPLE_REPLY_SIZE + (readLength ?? 0)) return undefined;
    this.input.skip(SIMPLE_REPLY_SIZE);
    if (readLength === undefined) return { kind: 'simpleReply', error, cookie };
    return { kind: 'simpleReply', error, cookie, data: this.input.take(readLength) };
  }

  private nextChunk(): ServerMessage | undefined {
    if (this.input.length < CHUNK_HEADER_SIZE) return undefined;
    const h = this.input.peek(CHUNK_HEADER_SIZE);
    const length = h.readUInt32BE(16);
    if (length > this.maxPayload) {
      throw new NbdProtocolError('TOO_LARGE', `structured chunk of ${length} bytes`);
    }
    if (this.input.length < CHUNK_HEADER_SIZE + length) return undefined;
    const flags = h.readUInt16BE(4);
    const type = h.readUInt16BE(6);
    const cookie = h.readBigUInt64BE(8);
    this.input.skip(CHUNK_HEADER_SIZE);
    return { kind: 'chunk', flags, type, cookie, data: this.input.take(length) };
  }
}
