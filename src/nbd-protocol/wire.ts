/**
 * Small big-endian helpers shared by the parsers, decoders and serializers: 64-bit values as
 * numbers, and length-prefixed UTF-8 strings.
 */
import { MAX_STRING_LENGTH } from './constants.ts';
import { NbdProtocolError } from './errors.ts';

const TWO_32 = 0x1_0000_0000;

/** Read a u64 as a number (exact up to 2^53; above that the nearest double, still huge). */
export function readU64(buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset) * TWO_32 + buf.readUInt32BE(offset + 4);
}

/** Write a non-negative integer (< 2^64) as a u64. */
export function writeU64(buf: Buffer, value: number, offset: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32) >>> 0, offset);
  buf.writeUInt32BE((value % TWO_32) >>> 0, offset + 4);
}

/** A cursor over one message payload; every read is bounds-checked against the payload. */
export class Reader {
  private pos = 0;
  private readonly buf: Buffer;
  private readonly what: string;

  constructor(buf: Buffer, what: string) {
    this.buf = buf;
    this.what = what;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number): void {
    if (this.remaining < n) {
      throw new NbdProtocolError(
        'BAD_OPTION_DATA',
        `${this.what}: needs ${n} more bytes, has ${this.remaining}`,
        false,
      );
    }
  }

  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u64(): number {
    this.need(8);
    const v = readU64(this.buf, this.pos);
    this.pos += 8;
    return v;
  }

  bytes(n: number): Buffer {
    this.need(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  string(n: number): string {
    // A length past the end of the payload is malformed data, whatever its size; only a string
    // that is really there can be "too long".
    this.need(n);
    if (n > MAX_STRING_LENGTH) {
      throw new NbdProtocolError('TOO_LARGE', `${this.what}: string of ${n} bytes`, false);
    }
    return this.bytes(n).toString('utf8');
  }

  /** The rest of the payload as a string. */
  rest(): string {
    return this.string(this.remaining);
  }

  end(): void {
    if (this.remaining !== 0) {
      throw new NbdProtocolError('BAD_OPTION_DATA', `${this.what}: ${this.remaining} unexpected trailing bytes`, false);
    }
  }
}

/** UTF-8 bytes of a protocol string, refusing strings over the protocol's 4096-byte limit. */
export function stringBytes(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > MAX_STRING_LENGTH) {
    throw new NbdProtocolError('TOO_LARGE', `${what} is ${b.length} bytes (limit 4096)`, false);
  }
  return b;
}
