/**
 * ServerParser (client -> server framing). Inputs are built by hand from the spec's wire layouts
 * (not by the serializer), then fed whole, split in two at every offset, and one byte at a time
 * (pg-protocol's split-buffer pattern). One byte at a time also checks that each message comes
 * out exactly when its last byte arrives, never earlier and never later.
 */
import { describe, expect, it } from 'vitest';
import type { ClientMessage } from '../../src/nbd-protocol/index.ts';
import {
  ClientFlag,
  Command,
  CommandFlag,
  Option,
  ServerParser,
  type ServerParserOptions,
} from '../../src/nbd-protocol/index.ts';
import * as H from './harness.ts';

// ------------------------------------------------------------------------- wire builders
const { hex, u32, catchError } = H;
const IHAVEOPT = hex('49484156454f5054');

/** u64 IHAVEOPT | u32 option | u32 length | data */
const opt = (code: number, data: Buffer = Buffer.alloc(0)): Buffer =>
  Buffer.concat([IHAVEOPT, u32(code), u32(data.length), data]);

/** u32 0x25609513 | u16 flags | u16 type | u64 cookie | u64 offset | u32 length */
function req(flags: number, type: number, cookie: bigint, offset: bigint, length: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(offset, 16);
  b.writeUInt32BE(length, 24);
  return b;
}

const pattern = (n: number, seed = 1): Buffer => H.pattern(n, seed, 31);

// ------------------------------------------------------------------------- split harness
type Frame = H.Frame<ClientMessage>;
interface Session {
  options?: ServerParserOptions;
  frames: Frame[];
  after?: (m: ClientMessage, p: ServerParser) => void;
}
const toHarness = (s: Session): H.Session<ClientMessage, ServerParser> => ({
  ...s,
  make: () => new ServerParser(s.options),
});
const _parseChunks = (s: Session, chunks: Buffer[]): ClientMessage[] => H.parseChunks(toHarness(s), chunks);
const expectEverySplit = (s: Session): void => H.expectEverySplit(toHarness(s));

// ------------------------------------------------------------------------- fixtures
const option = (code: number, data: Buffer = Buffer.alloc(0)): Frame => ({
  bytes: opt(code, data),
  expected: { kind: 'option', option: code, data },
});

const OPTIONS: Record<string, Frame> = {
  EXPORT_NAME: option(Option.EXPORT_NAME, Buffer.from('disk')),
  ABORT: option(Option.ABORT),
  LIST: option(Option.LIST),
  STARTTLS: option(Option.STARTTLS),
  // namelen 6, "snap-1", 2 infos: NAME, BLOCK_SIZE
  INFO: option(Option.INFO, hex('00000006 736e61702d31 0002 0001 0003')),
  // empty name (default export), no infos
  GO: option(Option.GO, hex('00000000 0000')),
  STRUCTURED_REPLY: option(Option.STRUCTURED_REPLY),
  // namelen 4, "disk", 0 queries
  LIST_META_CONTEXT: option(Option.LIST_META_CONTEXT, hex('00000004 6469736b 00000000')),
  // namelen 4, "disk", 1 query of 15 bytes: "base:allocation"
  SET_META_CONTEXT: option(
    Option.SET_META_CONTEXT,
    Buffer.concat([hex('00000004 6469736b 00000001 0000000f'), Buffer.from('base:allocation')]),
  ),
  EXTENDED_HEADERS: option(Option.EXTENDED_HEADERS),
  // nbd-tester-client -h: an unknown option with 4 data bytes
  UNKNOWN: option(0x7654321, hex('01020304')),
};

const request = (flags: number, type: number, cookie: bigint, offset: number, length: number, data?: Buffer): Frame => {
  const header = req(flags, type, cookie, BigInt(offset), length);
  const expected: ClientMessage = { kind: 'request', flags, type, cookie, offset, length };
  if (data !== undefined) expected.data = data;
  return { bytes: data === undefined ? header : Buffer.concat([header, data]), expected };
};

const WRITE_DATA = pattern(100);
const REQUESTS: Record<string, Frame> = {
  READ: request(0, Command.READ, 1n, 4096, 512),
  WRITE: request(CommandFlag.FUA, Command.WRITE, 2n, 8192, 100, WRITE_DATA),
  'empty WRITE': request(0, Command.WRITE, 3n, 0, 0, Buffer.alloc(0)),
  DISC: request(0, Command.DISC, 4n, 0, 0),
  FLUSH: request(0, Command.FLUSH, 5n, 0, 0),
  TRIM: request(0, Command.TRIM, 6n, 1 << 20, 65536),
  CACHE: request(0, Command.CACHE, 7n, 0, 4096),
  WRITE_ZEROES: request(CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO, Command.WRITE_ZEROES, 8n, 2 ** 33, 1 << 24),
  BLOCK_STATUS: request(CommandFlag.REQ_ONE, Command.BLOCK_STATUS, 9n, 0, 0x80000000),
  'unknown command': request(0, 99, 10n, 0, 0),
};

const transmission: ServerParserOptions = { phase: 'transmission' };

// ------------------------------------------------------------------------- tests
describe('ServerParser: client flags', () => {
  it('parses the 4-byte client flags at every split and moves to the options phase', () => {
    const flags = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;
    expectEverySplit({ frames: [{ bytes: hex('00000003'), expected: { kind: 'clientFlags', flags } }] });
    const p = new ServerParser();
    expect(p.phase).toBe('clientFlags');
    p.push(hex('000000'));
    expect(p.next()).toBeUndefined();
    expect(p.phase).toBe('clientFlags');
    p.push(hex('01'));
    expect(p.next()).toStrictEqual({ kind: 'clientFlags', flags: 1 });
    expect(p.phase).toBe('options');
  });

  it('passes unknown flag bits through for the owner to refuse', () => {
    const p = new ServerParser();
    p.push(hex('80000004'));
    expect(p.next()).toStrictEqual({ kind: 'clientFlags', flags: 0x80000004 });
  });
});

describe('ServerParser: options', () => {
  for (const [name, frame] of Object.entries(OPTIONS)) {
    it(`parses ${name} at every split`, () => {
      expectEverySplit({ options: { phase: 'options' }, frames: [frame] });
    });
  }

  it('parses client flags followed by every option back to back, at every split', () => {
    expectEverySplit({
      frames: [{ bytes: hex('00000001'), expected: { kind: 'clientFlags', flags: 1 } }, ...Object.values(OPTIONS)],
    });
  });

  it('copies option data out of the caller buffer', () => {
    const bytes = opt(Option.EXPORT_NAME, Buffer.from('abc'));
    const p = new ServerParser({ phase: 'options' });
    p.push(bytes);
    const m = p.next();
    bytes.fill(0);
    expect(m).toStrictEqual({ kind: 'option', option: 1, data: Buffer.from('abc') });
  });
});

describe('ServerParser: requests', () => {
  for (const [name, frame] of Object.entries(REQUESTS)) {
    it(`parses ${name} at every split`, () => {
      expectEverySplit({ options: transmission, frames: [frame] });
    });
  }

  it('parses every request pipelined in one buffer, at every split', () => {
    expectEverySplit({ options: transmission, frames: Object.values(REQUESTS) });
  });

  it('keeps cookies exact as bigint and u64 offsets above 2^32', () => {
    expectEverySplit({
      options: transmission,
      frames: [
        request(0, Command.READ, 0xffffffffffffffffn, 2 ** 40 + 4096, 4096),
        request(0, Command.READ, 0x8000000000000001n, Number.MAX_SAFE_INTEGER, 1),
        request(0, Command.READ, 0n, 2 ** 32, 0xffffffff),
        request(0, Command.WRITE, 0x0123456789abcdefn, 2 ** 52 + 512, 3, hex('aabbcc')),
      ],
    });
  });

  it('walks a whole session: flags, options, GO, then pipelined requests', () => {
    expectEverySplit({
      frames: [
        { bytes: hex('00000003'), expected: { kind: 'clientFlags', flags: 3 } },
        OPTIONS.STRUCTURED_REPLY as Frame,
        OPTIONS.SET_META_CONTEXT as Frame,
        OPTIONS.GO as Frame,
        REQUESTS.WRITE as Frame,
        REQUESTS.BLOCK_STATUS as Frame,
        REQUESTS.DISC as Frame,
      ],
      after: (m, p) => {
        if (m.kind === 'option' && m.option === Option.GO) p.startTransmission();
      },
    });
  });

  it('does not read requests until the owner starts transmission', () => {
    const p = new ServerParser({ phase: 'options' });
    p.push(Buffer.concat([opt(Option.EXPORT_NAME, Buffer.from('x')), req(0, Command.READ, 1n, 0n, 1)]));
    expect(p.next()).toMatchObject({ kind: 'option', option: Option.EXPORT_NAME });
    expect(p.buffered).toBe(28);
    p.startTransmission();
    expect(p.phase).toBe('transmission');
    expect(p.next()).toMatchObject({ kind: 'request', type: Command.READ, cookie: 1n });
    expect(p.next()).toBeUndefined();
    expect(p.buffered).toBe(0);
  });
});

describe('ServerParser: oversized WRITE', () => {
  const big = request(0, Command.WRITE, 0xdeadn, 1 << 20, 2000);
  const discarded: Frame = {
    bytes: Buffer.concat([big.bytes, pattern(2000, 7)]),
    expected: { ...big.expected, discarded: true } as ClientMessage,
  };

  it('discards the payload, flags the request, and stays in sync (every split)', () => {
    expectEverySplit({
      options: { phase: 'transmission', maxPayload: 1024 },
      frames: [discarded, REQUESTS.READ as Frame, REQUESTS.WRITE as Frame],
    });
  });

  it('does not buffer the discarded payload', () => {
    const p = new ServerParser({ phase: 'transmission', maxPayload: 1024 });
    p.push(discarded.bytes.subarray(0, 28 + 1500));
    expect(p.next()).toBeUndefined();
    expect(p.buffered).toBe(0);
    p.push(Buffer.concat([discarded.bytes.subarray(28 + 1500), req(0, Command.FLUSH, 77n, 0n, 0)]));
    const m = p.next();
    expect(m).toStrictEqual(discarded.expected);
    expect(m).not.toHaveProperty('data');
    expect(p.next()).toStrictEqual({
      kind: 'request',
      flags: 0,
      type: Command.FLUSH,
      cookie: 77n,
      offset: 0,
      length: 0,
    });
  });

  it('keeps a WRITE of exactly maxPayload bytes', () => {
    expectEverySplit({
      options: { phase: 'transmission', maxPayload: 100 },
      frames: [REQUESTS.WRITE as Frame],
    });
  });

  it('only discards WRITE payloads: a large READ length is just a number', () => {
    const p = new ServerParser({ phase: 'transmission', maxPayload: 16 });
    p.push(req(0, Command.READ, 1n, 0n, 1 << 30));
    expect(p.next()).toStrictEqual({
      kind: 'request',
      flags: 0,
      type: Command.READ,
      cookie: 1n,
      offset: 0,
      length: 1 << 30,
    });
  });
});

describe('ServerParser: errors', () => {
  it('throws a fatal BAD_MAGIC for an option without IHAVEOPT', () => {
    const p = new ServerParser({ phase: 'options' });
    const bytes = opt(Option.LIST);
    bytes[7] = 0x55; // "IHAVEOPU"
    p.push(bytes.subarray(0, 15));
    expect(p.next()).toBeUndefined(); // not judged before the whole header is there
    p.push(bytes.subarray(15));
    const err = catchError(() => p.next());
    expect(err.code).toBe('BAD_MAGIC');
    expect(err.fatal).toBe(true);
  });

  it('throws a fatal BAD_MAGIC for a request with a bad magic', () => {
    const p = new ServerParser(transmission);
    const bytes = req(0, Command.READ, 1n, 0n, 512);
    bytes.writeUInt32BE(0x25609514, 0); // the reserved trace-log magic
    p.push(bytes);
    const err = catchError(() => p.next());
    expect(err.code).toBe('BAD_MAGIC');
    expect(err.fatal).toBe(true);
  });

  it('refuses an extended-header request with BAD_MAGIC', () => {
    const p = new ServerParser(transmission);
    const bytes = Buffer.concat([req(0, Command.READ, 1n, 0n, 0), Buffer.alloc(4)]);
    bytes.writeUInt32BE(0x21e41c71, 0);
    p.push(bytes);
    const err = catchError(() => p.next());
    expect(err.code).toBe('BAD_MAGIC');
    expect(err.message).toMatch(/extended/);
  });

  it('throws a fatal TOO_LARGE for an option over maxOptionLength, from its header alone', () => {
    const p = new ServerParser({ phase: 'options', maxOptionLength: 1000 });
    p.push(Buffer.concat([IHAVEOPT, u32(Option.EXPORT_NAME), u32(1001)]));
    const err = catchError(() => p.next());
    expect(err.code).toBe('TOO_LARGE');
    expect(err.fatal).toBe(true);
  });

  it('accepts an option of exactly maxOptionLength bytes', () => {
    const p = new ServerParser({ phase: 'options', maxOptionLength: 1000 });
    p.push(opt(Option.EXPORT_NAME, pattern(1000)));
    expect(p.next()).toStrictEqual({ kind: 'option', option: 1, data: pattern(1000) });
  });

  it('defaults to a 64 KiB option limit', () => {
    const ok = new ServerParser({ phase: 'options' });
    ok.push(Buffer.concat([IHAVEOPT, u32(Option.EXPORT_NAME), u32(65536)]));
    expect(ok.next()).toBeUndefined();
    const bad = new ServerParser({ phase: 'options' });
    bad.push(Buffer.concat([IHAVEOPT, u32(Option.EXPORT_NAME), u32(65537)]));
    expect(catchError(() => bad.next()).code).toBe('TOO_LARGE');
  });
});
