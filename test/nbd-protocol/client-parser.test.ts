/**
 * ClientParser (server -> client framing). Inputs are built by hand from the spec's wire layouts
 * (not by the serializer), then fed whole, split in two at every offset, and one byte at a time.
 * One byte at a time also checks that each message comes out exactly when its last byte arrives.
 */
import { describe, expect, it } from 'vitest';
import type { ServerMessage } from '../../src/nbd-protocol/index.ts';
import {
  ChunkType,
  ClientParser,
  type ClientParserOptions,
  Info,
  NbdError,
  Option,
  Reply,
  ReplyFlag,
} from '../../src/nbd-protocol/index.ts';
import * as H from './harness.ts';

// ------------------------------------------------------------------------- wire builders
const { catchError, hex, u16, u32, u64, str } = H;
const GREETING = hex('4e42444d41474943 49484156454f5054 0003');
const REP_MAGIC = hex('0003e889045565a9');

/** u64 0x3e889045565a9 | u32 option | u32 type | u32 length | data */
const optRep = (option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer =>
  Buffer.concat([REP_MAGIC, u32(option), u32(type), u32(data.length), data]);

/** u32 0x67446698 | u32 error | u64 cookie | data */
const simple = (error: number, cookie: bigint, data: Buffer = Buffer.alloc(0)): Buffer =>
  Buffer.concat([hex('67446698'), u32(error), u64(cookie), data]);

/** u32 0x668e33ef | u16 flags | u16 type | u64 cookie | u32 length | payload */
const chunk = (flags: number, type: number, cookie: bigint, payload: Buffer): Buffer =>
  Buffer.concat([hex('668e33ef'), u16(flags), u16(type), u64(cookie), u32(payload.length), payload]);

// ------------------------------------------------------------------------- split harness
type Frame = H.Frame<ServerMessage>;
interface Session {
  options?: ClientParserOptions;
  frames: Frame[];
  after?: (m: ServerMessage, p: ClientParser) => void;
}
const toHarness = (s: Session): H.Session<ServerMessage, ClientParser> => ({
  ...s,
  make: () => new ClientParser(s.options),
});
const _parseChunks = (s: Session, chunks: Buffer[]): ServerMessage[] => H.parseChunks(toHarness(s), chunks);
const expectEverySplit = (s: Session): void => H.expectEverySplit(toHarness(s));
const pattern = (n: number, seed = 1): Buffer => H.pattern(n, seed, 13);

// ------------------------------------------------------------------------- fixtures
const greeting: Frame = { bytes: GREETING, expected: { kind: 'greeting', handshakeFlags: 3 } };

const reply = (option: number, type: number, data: Buffer = Buffer.alloc(0)): Frame => ({
  bytes: optRep(option, type, data),
  expected: { kind: 'optionReply', option, type, data },
});

const OPTION_REPLIES: Record<string, Frame> = {
  ACK: reply(Option.GO, Reply.ACK),
  SERVER: reply(Option.LIST, Reply.SERVER, Buffer.concat([u32(4), str('disk'), str('main disk')])),
  'INFO EXPORT': reply(Option.GO, Reply.INFO, Buffer.concat([u16(Info.EXPORT), u64(2n ** 40n + 512n), u16(0x0ded)])),
  'INFO NAME': reply(Option.INFO, Reply.INFO, Buffer.concat([u16(Info.NAME), str('disk')])),
  'INFO DESCRIPTION': reply(Option.INFO, Reply.INFO, Buffer.concat([u16(Info.DESCRIPTION), str('snapshot @ 12:00')])),
  'INFO BLOCK_SIZE': reply(
    Option.GO,
    Reply.INFO,
    Buffer.concat([u16(Info.BLOCK_SIZE), u32(1), u32(4096), u32(32 << 20)]),
  ),
  META_CONTEXT: reply(Option.SET_META_CONTEXT, Reply.META_CONTEXT, Buffer.concat([u32(1), str('base:allocation')])),
  ERR_UNSUP: reply(11, Reply.ERR_UNSUP, str('EXTENDED_HEADERS not supported')),
  ERR_POLICY: reply(Option.STARTTLS, Reply.ERR_POLICY),
  ERR_UNKNOWN: reply(Option.GO, Reply.ERR_UNKNOWN, str('no such export')),
  ERR_INVALID: reply(Option.LIST_META_CONTEXT, Reply.ERR_INVALID, str('bad')),
};

const readLengths = new Map<bigint, number>([
  [1n, 16],
  [3n, 0],
  [0xffffffffffffffffn, 8],
]);
const readLength = (cookie: bigint): number | undefined => readLengths.get(cookie);
const transmission: ClientParserOptions = { phase: 'transmission', readLength };

const READ_DATA = pattern(16);
const REPLIES: Record<string, Frame> = {
  'simple READ reply with data': {
    bytes: simple(0, 1n, READ_DATA),
    expected: { kind: 'simpleReply', error: 0, cookie: 1n, data: READ_DATA },
  },
  'simple reply to a non-READ': {
    bytes: simple(0, 2n),
    expected: { kind: 'simpleReply', error: 0, cookie: 2n },
  },
  'simple READ reply of 0 bytes': {
    bytes: simple(0, 3n),
    expected: { kind: 'simpleReply', error: 0, cookie: 3n, data: Buffer.alloc(0) },
  },
  'simple error reply to a READ (no data)': {
    bytes: simple(NbdError.EIO, 0xffffffffffffffffn),
    expected: { kind: 'simpleReply', error: NbdError.EIO, cookie: 0xffffffffffffffffn },
  },
};

const chunkFrame = (flags: number, type: number, cookie: bigint, payload: Buffer): Frame => ({
  bytes: chunk(flags, type, cookie, payload),
  expected: { kind: 'chunk', flags, type, cookie, data: payload },
});

const CHUNKS: Record<string, Frame> = {
  OFFSET_DATA: chunkFrame(0, ChunkType.OFFSET_DATA, 10n, Buffer.concat([u64(2n ** 33n), pattern(24)])),
  OFFSET_HOLE: chunkFrame(0, ChunkType.OFFSET_HOLE, 10n, Buffer.concat([u64(2n ** 33n + 24n), u32(4072)])),
  BLOCK_STATUS: chunkFrame(
    ReplyFlag.DONE,
    ChunkType.BLOCK_STATUS,
    11n,
    Buffer.concat([u32(1), u32(65536), u32(0), u32(1 << 20), u32(3)]),
  ),
  ERROR: chunkFrame(
    ReplyFlag.DONE,
    ChunkType.ERROR,
    12n,
    Buffer.concat([u32(NbdError.EINVAL), u16(7), str('too far')]),
  ),
  ERROR_OFFSET: chunkFrame(
    0,
    ChunkType.ERROR_OFFSET,
    10n,
    Buffer.concat([u32(NbdError.EIO), u16(3), str('bad'), u64(2n ** 33n + 4096n)]),
  ),
  NONE: chunkFrame(ReplyFlag.DONE, ChunkType.NONE, 10n, Buffer.alloc(0)),
};

// ------------------------------------------------------------------------- tests
describe('ClientParser: greeting', () => {
  it('parses the 18-byte greeting at every split and moves to options', () => {
    expect(GREETING.length).toBe(18);
    expectEverySplit({ frames: [greeting] });
    const p = new ClientParser();
    p.push(GREETING.subarray(0, 17));
    expect(p.next()).toBeUndefined();
    expect(p.phase).toBe('greeting');
    p.push(GREETING.subarray(17));
    expect(p.next()).toStrictEqual({ kind: 'greeting', handshakeFlags: 3 });
    expect(p.phase).toBe('options');
  });

  it('refuses a stream that is not NBD with a fatal BAD_MAGIC', () => {
    const p = new ClientParser();
    p.push(Buffer.from('HTTP/1.1 400 Bad Request\r\n'));
    const err = catchError(() => p.next());
    expect(err.code).toBe('BAD_MAGIC');
    expect(err.fatal).toBe(true);
  });

  it('refuses a newstyle greeting whose second word is not IHAVEOPT', () => {
    const p = new ClientParser();
    p.push(hex('4e42444d41474943 49484156454f5055 0003'));
    expect(catchError(() => p.next()).code).toBe('BAD_MAGIC');
  });

  it('reports an oldstyle greeting as OLDSTYLE', () => {
    const oldstyle = Buffer.concat([
      hex('4e42444d41474943 0000420281861253'),
      u64(1n << 30n),
      u32(0x0001),
      Buffer.alloc(124),
    ]);
    expect(oldstyle.length).toBe(152);
    const p = new ClientParser();
    p.push(oldstyle.subarray(0, 18));
    const err = catchError(() => p.next());
    expect(err.code).toBe('OLDSTYLE');
    expect(err.fatal).toBe(true);
  });
});

describe('ClientParser: option replies', () => {
  for (const [name, frame] of Object.entries(OPTION_REPLIES)) {
    it(`parses ${name} at every split`, () => {
      expectEverySplit({ options: { phase: 'options' }, frames: [frame] });
    });
  }

  it('parses the greeting and every option reply back to back, at every split', () => {
    expectEverySplit({ frames: [greeting, ...Object.values(OPTION_REPLIES)] });
  });

  it('throws a fatal BAD_MAGIC for an option reply with a bad magic', () => {
    const bytes = optRep(Option.GO, Reply.ACK);
    bytes[0] = 0x01;
    const p = new ClientParser({ phase: 'options' });
    p.push(bytes);
    const err = catchError(() => p.next());
    expect(err.code).toBe('BAD_MAGIC');
    expect(err.fatal).toBe(true);
  });

  it('throws TOO_LARGE for an option reply over maxPayload, from its header alone', () => {
    const p = new ClientParser({ phase: 'options', maxPayload: 4096 });
    p.push(Buffer.concat([REP_MAGIC, u32(Option.LIST), u32(Reply.SERVER), u32(4097)]));
    const err = catchError(() => p.next());
    expect(err.code).toBe('TOO_LARGE');
    expect(err.fatal).toBe(true);
  });
});

describe('ClientParser: end of handshake', () => {
  const exportReply = (noZeroes: boolean): Frame => ({
    bytes: Buffer.concat([u64(2n ** 35n + 1024n), u16(0x0587), Buffer.alloc(noZeroes ? 0 : 124)]),
    expected: { kind: 'exportNameReply', size: 2 ** 35 + 1024, transmissionFlags: 0x0587 },
  });

  for (const noZeroes of [true, false]) {
    it(`parses the EXPORT_NAME reply ${noZeroes ? 'without' : 'with'} padding, then replies`, () => {
      expect(exportReply(noZeroes).bytes.length).toBe(noZeroes ? 10 : 134);
      expectEverySplit({
        options: { readLength },
        frames: [greeting, exportReply(noZeroes), ...Object.values(REPLIES)],
        after: (m, p) => {
          if (m.kind === 'greeting') p.expectExportNameReply(noZeroes);
        },
      });
    });
  }

  it('enters transmission by itself after the EXPORT_NAME reply', () => {
    const p = new ClientParser({ phase: 'options' });
    p.expectExportNameReply(true);
    expect(p.phase).toBe('exportName');
    p.push(exportReply(true).bytes);
    expect(p.next()).toStrictEqual(exportReply(true).expected);
    expect(p.phase).toBe('transmission');
  });

  it('walks GO: INFO replies, ACK, then structured chunks', () => {
    expectEverySplit({
      frames: [
        greeting,
        OPTION_REPLIES['INFO EXPORT'] as Frame,
        OPTION_REPLIES['INFO BLOCK_SIZE'] as Frame,
        OPTION_REPLIES.ACK as Frame,
        ...Object.values(CHUNKS),
      ],
      after: (m, p) => {
        if (m.kind === 'optionReply' && m.option === Option.GO && m.type === Reply.ACK) {
          p.startTransmission();
        }
      },
    });
  });
});

describe('ClientParser: transmission', () => {
  for (const [name, frame] of Object.entries({ ...REPLIES, ...CHUNKS })) {
    it(`parses ${name} at every split`, () => {
      expectEverySplit({ options: transmission, frames: [frame] });
    });
  }

  it('parses simple replies and chunks interleaved in one buffer, at every split', () => {
    const r = REPLIES;
    const c = CHUNKS;
    expectEverySplit({
      options: transmission,
      frames: [
        c.OFFSET_DATA,
        r['simple READ reply with data'],
        c.BLOCK_STATUS,
        r['simple error reply to a READ (no data)'],
        c.OFFSET_HOLE,
        c.ERROR_OFFSET,
        r['simple reply to a non-READ'],
        c.NONE,
        c.ERROR,
      ] as Frame[],
    });
  });

  it('asks readLength only for successful simple replies', () => {
    const asked: bigint[] = [];
    const p = new ClientParser({
      phase: 'transmission',
      readLength: (cookie) => {
        asked.push(cookie);
        return 4;
      },
    });
    p.push(Buffer.concat([simple(NbdError.EPERM, 5n), simple(0, 6n, hex('01020304'))]));
    expect(p.next()).toStrictEqual({ kind: 'simpleReply', error: NbdError.EPERM, cookie: 5n });
    expect(p.next()).toStrictEqual({ kind: 'simpleReply', error: 0, cookie: 6n, data: hex('01020304') });
    expect(asked).toEqual([6n]);
  });

  it('throws a fatal BAD_MAGIC for an extended or unknown reply magic', () => {
    for (const magic of ['6e8a278c', '96744668', '00000000']) {
      const p = new ClientParser(transmission);
      p.push(Buffer.concat([hex(magic), Buffer.alloc(28)]));
      const err = catchError(() => p.next());
      expect(err.code).toBe('BAD_MAGIC');
      expect(err.fatal).toBe(true);
    }
  });

  it('throws a fatal TOO_LARGE for a chunk over maxPayload, from its header alone', () => {
    const p = new ClientParser({ phase: 'transmission', maxPayload: 1024 });
    p.push(chunk(0, ChunkType.OFFSET_DATA, 1n, Buffer.alloc(1025)).subarray(0, 20));
    const err = catchError(() => p.next());
    expect(err.code).toBe('TOO_LARGE');
    expect(err.fatal).toBe(true);
  });
});
