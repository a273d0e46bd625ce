/**
 * The transmission phase of an NBD client connection, framed without an allocation per socket
 * read: bytes are read into one reused scratch buffer, and a READ's payload goes straight into
 * the buffer of the request it answers (`dataTarget`), in reads as large as what is left of it.
 *
 * A read-into-buffer source (`net.connect({ onread })`) asks `next()` where its next read goes and
 * reports `filled(buffer, n)`; any other source (a TLS socket's 'data' events) hands chunks to
 * `push`, which copies them through the same path. Replies that end in the scratch are parsed
 * there: a small READ's payload is copied once from it into its target; what follows the first
 * bytes of a large one is read into the target itself. Other payloads (block status, errors) are
 * handed out as views of the scratch, valid during the call only, or gathered in a buffer of their
 * own when larger than the scratch. Pure: no socket here, so it is tested byte by byte.
 */
import {
  CHUNK_HEADER_SIZE,
  ChunkType,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NbdProtocolError,
  SIMPLE_REPLY_SIZE,
} from '../nbd-protocol/index.ts';

/** The reads of replies: where payloads go, and what arrived. Any of these may throw (the connection is then broken). */
export interface ReplyHandler {
  /** The buffer for the payload of a simple reply without error (its READ's bytes), or undefined. */
  simpleTarget(cookie: bigint): Buffer | undefined;
  /** A simple reply; a READ's payload is in its target. */
  simple(cookie: bigint, error: number): void;
  /** The buffer (exactly `length` bytes) for the data of an OFFSET_DATA chunk at `offset`. */
  dataTarget(cookie: bigint, offset: number, length: number): Buffer;
  /** An OFFSET_DATA chunk's data is in its target. */
  data(cookie: bigint, flags: number): void;
  /** Any other chunk; `payload` is valid during the call only. */
  chunk(cookie: bigint, flags: number, type: number, payload: Buffer): void;
}

/** Node's own read size: replies and small payloads are read into this much at a time. */
export const SCRATCH_SIZE = 64 * 1024;
/** An OFFSET_DATA chunk's header and offset, before its data. */
const DATA_HEAD = CHUNK_HEADER_SIZE + 8;

type Target = 'simple' | 'data' | 'gather';

export class ReplyReader {
  private readonly handler: ReplyHandler;
  private readonly maxPayload: number;
  private readonly scratch: Buffer;
  /** Unparsed bytes of the scratch: [start, end). */
  private start = 0;
  private end = 0;
  /** The payload being read into a buffer of its own, and how much of it is in. */
  private target: Buffer | undefined;
  private kind: Target = 'data';
  private got = 0;
  private cookie = 0n;
  private flags = 0;
  private type = 0;
  /** What `next()` last returned. */
  private handed: Buffer | undefined;
  private broken = false;

  constructor(handler: ReplyHandler, options: { maxPayload?: number; scratchSize?: number } = {}) {
    this.handler = handler;
    this.maxPayload = options.maxPayload ?? 64 * 1024 * 1024 + 64;
    this.scratch = Buffer.allocUnsafeSlow(options.scratchSize ?? SCRATCH_SIZE);
  }

  /** Where the next read goes: the rest of the payload being received, else free scratch space. */
  next(): Buffer {
    let b: Buffer;
    if (this.target !== undefined) b = this.got === 0 ? this.target : this.target.subarray(this.got);
    else {
      if (this.start > 0) {
        // the unparsed tail (less than one message) moves to the front: room for a whole one
        this.scratch.copy(this.scratch, 0, this.start, this.end);
        this.end -= this.start;
        this.start = 0;
      }
      b = this.end === 0 ? this.scratch : this.scratch.subarray(this.end);
    }
    this.handed = b;
    return b;
  }

  /** A read put `n` bytes at the start of `buffer`; `buffer` is what `next()` returned, else the bytes are copied in. */
  filled(buffer: Uint8Array, n: number): void {
    if (this.broken || n <= 0) return;
    if (buffer !== this.handed) {
      this.push(Buffer.from(buffer.buffer, buffer.byteOffset, n));
      return;
    }
    this.handed = undefined;
    this.guard(() => {
      if (this.target === undefined) {
        this.end += n;
        this.parse();
        return;
      }
      this.got += n;
      if (this.got === this.target.length) this.finishTarget();
    });
  }

  /** Bytes from elsewhere (a 'data' event): copied into where they belong. */
  push(bytes: Buffer): void {
    for (let at = 0; at < bytes.length && !this.broken; ) {
      const into = this.next();
      const k = bytes.copy(into, 0, at);
      at += k;
      this.filled(into, k);
    }
  }

  private guard(work: () => void): void {
    try {
      work();
    } catch (err) {
      this.broken = true;
      throw err;
    }
  }

  /** Every whole reply in the scratch; a payload that goes on past it becomes the target. */
  private parse(): void {
    const s = this.scratch;
    while (this.target === undefined && this.end - this.start >= 4) {
      const at = this.start;
      const avail = this.end - at;
      const magic = s.readUInt32BE(at);
      if (magic === NBD_SIMPLE_REPLY_MAGIC) {
        if (avail < SIMPLE_REPLY_SIZE) return;
        const error = s.readUInt32BE(at + 4);
        const cookie = s.readBigUInt64BE(at + 8);
        this.start += SIMPLE_REPLY_SIZE;
        const into = error === 0 ? this.handler.simpleTarget(cookie) : undefined;
        if (into === undefined || into.length === 0) this.handler.simple(cookie, error);
        else this.receive('simple', into, cookie, 0, 0);
      } else if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
        if (avail < CHUNK_HEADER_SIZE) return;
        const flags = s.readUInt16BE(at + 4);
        const type = s.readUInt16BE(at + 6);
        const cookie = s.readBigUInt64BE(at + 8);
        const length = s.readUInt32BE(at + 16);
        if (length > this.maxPayload) throw new NbdProtocolError('TOO_LARGE', `structured chunk of ${length} bytes`);
        if (type === ChunkType.OFFSET_DATA && length > 8) {
          if (avail < DATA_HEAD) return;
          const offset = Number(s.readBigUInt64BE(at + CHUNK_HEADER_SIZE));
          this.start += DATA_HEAD;
          this.receive('data', this.handler.dataTarget(cookie, offset, length - 8), cookie, flags, type);
        } else if (CHUNK_HEADER_SIZE + length <= s.length) {
          if (avail < CHUNK_HEADER_SIZE + length) return; // the rest fits once the tail moves to the front
          this.start += CHUNK_HEADER_SIZE + length;
          this.handler.chunk(cookie, flags, type, s.subarray(at + CHUNK_HEADER_SIZE, this.start));
        } else {
          this.start += CHUNK_HEADER_SIZE;
          this.receive('gather', Buffer.allocUnsafe(length), cookie, flags, type);
        }
      } else {
        throw new NbdProtocolError('BAD_MAGIC', `reply with a bad magic (0x${magic.toString(16)})`);
      }
    }
    if (this.start === this.end) this.start = this.end = 0;
  }

  /** A payload for `into`: what the scratch holds of it is copied, the rest is read into it. */
  private receive(kind: Target, into: Buffer, cookie: bigint, flags: number, type: number): void {
    const k = Math.min(into.length, this.end - this.start);
    this.scratch.copy(into, 0, this.start, this.start + k);
    this.start += k;
    this.target = into;
    this.kind = kind;
    this.got = k;
    this.cookie = cookie;
    this.flags = flags;
    this.type = type;
    if (k === into.length) this.finishTarget();
    else this.start = this.end = 0; // the scratch is all used: free for the reads after the payload
  }

  private finishTarget(): void {
    const into = this.target as Buffer;
    this.target = undefined;
    if (this.kind === 'simple') this.handler.simple(this.cookie, 0);
    else if (this.kind === 'data') this.handler.data(this.cookie, this.flags);
    else this.handler.chunk(this.cookie, this.flags, this.type, into);
  }
}
