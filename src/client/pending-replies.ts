/**
 * The requests of one connection awaiting their replies, by cookie: what reply-reader.ts asks
 * (where a READ's payload goes) and tells (a reply, a chunk), turned into settled promises. A
 * READ's reply buffer is made at its first piece, from the caller's `allocate` (a buffer pool) or
 * of its own; a reply that breaks the protocol (unknown cookie, data outside the request) throws,
 * and the connection ends.
 */
import { NbdsnapError } from '../errors.ts';
import { Command, decodeChunk, type Extent, ReplyFlag } from '../nbd-protocol/index.ts';
import { requestError } from './failures.ts';
import type { ReplyHandler } from './reply-reader.ts';

export interface Pending {
  type: number;
  offset: number;
  length: number;
  data?: Buffer;
  extents?: Map<number, Extent[]>;
  error?: NbdsnapError;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

export class PendingReplies implements ReplyHandler {
  private readonly byCookie = new Map<bigint, Pending>();
  private readonly allocate: ((length: number) => Buffer) | undefined;

  constructor(allocate: ((length: number) => Buffer) | undefined) {
    this.allocate = allocate;
  }

  get size(): number {
    return this.byCookie.size;
  }

  add(cookie: bigint, p: Pending): void {
    this.byCookie.set(cookie, p);
  }

  /** The connection ended: every request fails with `err`. */
  failAll(err: Error): void {
    for (const p of this.byCookie.values()) p.reject(err);
    this.byCookie.clear();
  }

  /** The request a reply answers; a reply to none breaks the connection. */
  private known(cookie: bigint): Pending {
    const p = this.byCookie.get(cookie);
    if (p === undefined) throw new NbdsnapError('EIO', `reply for unknown cookie ${cookie}`);
    return p;
  }

  simpleTarget(cookie: bigint): Buffer | undefined {
    const p = this.byCookie.get(cookie);
    if (p?.type !== Command.READ || p.length === 0) return undefined;
    return this.readBuffer(p, true);
  }

  simple(cookie: bigint, error: number): void {
    const p = this.known(cookie);
    this.byCookie.delete(cookie);
    if (error !== 0) p.reject(requestError(error, ''));
    else p.resolve(p.type === Command.READ ? (p.data ?? Buffer.alloc(0)) : undefined);
  }

  /** Where an OFFSET_DATA chunk's bytes go: their place in the READ's reply buffer. */
  dataTarget(cookie: bigint, offset: number, length: number): Buffer {
    const p = this.known(cookie);
    const at = this.within(p, offset, length, 'OFFSET_DATA');
    const b = this.readBuffer(p, at === 0 && length === p.length);
    return at === 0 && length === b.length ? b : b.subarray(at, at + length);
  }

  /** Where [offset, offset + length) is in `p`'s reply; outside it, the server broke the protocol. */
  private within(p: Pending, offset: number, length: number, what: string): number {
    const at = offset - p.offset;
    if (p.type !== Command.READ || at < 0 || at + length > p.length)
      throw new NbdsnapError('EIO', `${what} chunk for bytes the request did not ask for`);
    return at;
  }

  chunk(cookie: bigint, flags: number, type: number, payload: Buffer): void {
    const p = this.known(cookie);
    const c = decodeChunk(type, payload);
    if (c.chunk === 'OFFSET_HOLE') {
      const at = this.within(p, c.offset, c.length, 'OFFSET_HOLE');
      this.readBuffer(p, false).fill(0, at, at + c.length);
    } else if (c.chunk === 'BLOCK_STATUS') p.extents?.set(c.contextId, c.extents);
    else if (c.chunk === 'ERROR' || c.chunk === 'ERROR_OFFSET') p.error ??= requestError(c.error, c.message);
    this.onChunkEnd(p, cookie, flags);
  }

  data(cookie: bigint, flags: number): void {
    this.onChunkEnd(this.known(cookie), cookie, flags);
  }

  /** After a chunk: the reply is complete with its last one (DONE). */
  private onChunkEnd(p: Pending, cookie: bigint, flags: number): void {
    if ((flags & ReplyFlag.DONE) === 0) return;
    this.byCookie.delete(cookie);
    if (p.error !== undefined) p.reject(p.error);
    else p.resolve(p.type === Command.READ ? this.readBuffer(p, false) : p.extents);
  }

  /**
   * A READ's reply buffer, made at its first piece: from `allocate` (the caller's pool) or of its
   * own. Zeros until filled, unless the first piece fills it whole (the usual answer).
   */
  private readBuffer(p: Pending, whole: boolean): Buffer {
    if (p.data === undefined) {
      if (this.allocate !== undefined) {
        p.data = this.allocate(p.length);
        if (!whole) p.data.fill(0);
      } else p.data = whole ? Buffer.allocUnsafe(p.length) : Buffer.alloc(p.length);
    }
    return p.data;
  }
}
