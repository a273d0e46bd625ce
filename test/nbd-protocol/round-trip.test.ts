/**
 * Serializers, in mqtt-packet's style: exact wire bytes for fixtures written out from the spec's
 * tables (generate), then serialize -> parse -> decode in both directions (mirror), checking that
 * every field comes back equal, including u64 values above 2^32 and bigint cookies.
 */
import { describe, expect, it } from 'vitest';
import type { ClientMessage, ServerMessage } from '../../src/nbd-protocol/index.ts';
import {
  ChunkType,
  ClientParser,
  type ClientParserPhase,
  Command,
  CommandFlag,
  decodeChunk,
  decodeOption,
  decodeOptionReply,
  GREETING_SIZE,
  HandshakeFlag,
  Info,
  NbdError,
  NbdProtocolError,
  Option,
  REQUEST_HEADER_SIZE,
  Reply,
  ReplyFlag,
  ServerParser,
  serialize,
} from '../../src/nbd-protocol/index.ts';

const hex = (s: string): string => s.replace(/\s+/g, '');
const REP = '0003e889045565a9';
const IHAVEOPT = '49484156454f5054';
const COOKIES = [0n, 1n, 0x0123456789abcdefn, 0x8000000000000000n, 0xffffffffffffffffn];
const U64S = [0, 1, 0xffffffff, 2 ** 32, 2 ** 32 + 1, 2 ** 40 + 512, 2 ** 52 + 4096, Number.MAX_SAFE_INTEGER];

/** Everything a ClientParser yields for `bytes`, starting in `phase`. */
function fromServer(bytes: Buffer, phase: ClientParserPhase, readLength?: number): ServerMessage[] {
  const p = new ClientParser({ phase, readLength: () => readLength });
  p.push(bytes);
  const out: ServerMessage[] = [];
  for (let m = p.next(); m !== undefined; m = p.next()) out.push(m);
  return out;
}

/** The one message in `bytes` (fails the test if there is not exactly one). */
function one<M>(messages: M[]): M {
  expect(messages).toHaveLength(1);
  return messages[0] as M;
}

function fromClient(bytes: Buffer, phase: 'clientFlags' | 'options' | 'transmission'): ClientMessage {
  const p = new ServerParser({ phase });
  p.push(bytes);
  const m = p.next();
  expect(p.next()).toBeUndefined();
  expect(p.buffered).toBe(0);
  return m as ClientMessage;
}

function decodedReply(bytes: Buffer, option: number) {
  const m = one(fromServer(bytes, 'options'));
  if (m.kind !== 'optionReply') throw new Error(`expected an option reply, got ${m.kind}`);
  expect(m.option).toBe(option);
  return decodeOptionReply(m.type, m.data);
}

function decodedChunk(bytes: Buffer, cookie: bigint, flags: number) {
  const m = one(fromServer(bytes, 'transmission'));
  if (m.kind !== 'chunk') throw new Error(`expected a chunk, got ${m.kind}`);
  expect({ cookie: m.cookie, flags: m.flags }).toEqual({ cookie, flags });
  return decodeChunk(m.type, m.data);
}

describe('constants match the spec tables', () => {
  it('has the spec values for magics, codes and sizes', () => {
    expect(serialize.ack(0).readBigUInt64BE(0)).toBe(0x0003e889045565a9n);
    expect(GREETING_SIZE).toBe(18);
    expect(REQUEST_HEADER_SIZE).toBe(28);
    expect(ChunkType.BLOCK_STATUS).toBe(5); // not nbd.h's stale 3
    expect([ChunkType.ERROR, ChunkType.ERROR_OFFSET]).toEqual([0x8001, 0x8002]);
    expect(Option).toMatchObject({ EXPORT_NAME: 1, GO: 7, STRUCTURED_REPLY: 8, EXTENDED_HEADERS: 11 });
    expect(Command).toMatchObject({ READ: 0, WRITE: 1, DISC: 2, BLOCK_STATUS: 7 });
  });

  it('sets bit 31 in every option error reply type on the wire', () => {
    for (const [name, type] of Object.entries(Reply)) {
      const bytes = serialize.optionReply(Option.GO, type);
      expect((bytes[12] as number) & 0x80, name).toBe(name.startsWith('ERR_') ? 0x80 : 0);
    }
  });
});

describe('exact wire bytes (generate)', () => {
  const fixtures: [string, Buffer, string][] = [
    [
      'greeting',
      serialize.greeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES),
      `4e42444d41474943 ${IHAVEOPT} 0003`,
    ],
    ['ack', serialize.ack(Option.GO), `${REP} 00000007 00000001 00000000`],
    [
      'optionError',
      serialize.optionError(Option.STARTTLS, Reply.ERR_POLICY, 'no'),
      `${REP} 00000005 80000002 00000002 6e6f`,
    ],
    ['replyServer', serialize.replyServer(Option.LIST, 'a', 'b'), `${REP} 00000003 00000002 00000006 00000001 61 62`],
    [
      'infoExport',
      serialize.infoExport(Option.GO, 2 ** 32 + 1, 0x0ded),
      `${REP} 00000007 00000003 0000000c 0000 0000000100000001 0ded`,
    ],
    ['infoName', serialize.infoName(Option.INFO, 'x'), `${REP} 00000006 00000003 00000003 0001 78`],
    ['infoDescription', serialize.infoDescription(Option.INFO, 'y'), `${REP} 00000006 00000003 00000003 0002 79`],
    [
      'infoBlockSize',
      serialize.infoBlockSize(Option.GO, { minimum: 1, preferred: 4096, maximum: 32 << 20 }),
      `${REP} 00000007 00000003 0000000e 0003 00000001 00001000 02000000`,
    ],
    [
      'metaContext',
      serialize.metaContext(Option.SET_META_CONTEXT, 1, 'base:allocation'),
      `${REP} 0000000a 00000004 00000013 00000001 ${Buffer.from('base:allocation').toString('hex')}`,
    ],
    ['exportNameReply, NO_ZEROES', serialize.exportNameReply(2 ** 33, 0x0003, true), '0000000200000000 0003'],
    [
      'exportNameReply, padded',
      serialize.exportNameReply(2 ** 33, 0x0003, false),
      `0000000200000000 0003 ${'00'.repeat(124)}`,
    ],
    ['simpleReply', serialize.simpleReply(0, 0xffffffffffffffffn), '67446698 00000000 ffffffffffffffff'],
    ['simpleReply, error', serialize.simpleReply(NbdError.EIO, 1n), '67446698 00000005 0000000000000001'],
    ['noneChunk', serialize.noneChunk(7n), '668e33ef 0001 0000 0000000000000007 00000000'],
    ['chunkHeader', serialize.chunkHeader(0, 0x1234, 7n, 99), '668e33ef 0000 1234 0000000000000007 00000063'],
    [
      'offsetDataHeader',
      serialize.offsetDataHeader(7n, false, 2 ** 33, 512),
      '668e33ef 0000 0001 0000000000000007 00000208 0000000200000000',
    ],
    [
      'offsetHoleChunk',
      serialize.offsetHoleChunk(7n, true, 4096, 4096),
      '668e33ef 0001 0002 0000000000000007 0000000c 0000000000001000 00001000',
    ],
    [
      'blockStatusChunk',
      serialize.blockStatusChunk(7n, true, 1, [{ length: 4096, flags: 3 }]),
      '668e33ef 0001 0005 0000000000000007 0000000c 00000001 00001000 00000003',
    ],
    [
      'errorChunk',
      serialize.errorChunk(7n, true, NbdError.EINVAL, 'x'),
      '668e33ef 0001 8001 0000000000000007 00000007 00000016 0001 78',
    ],
    [
      'errorChunk with offset',
      serialize.errorChunk(7n, false, NbdError.EIO, '', 2 ** 32),
      '668e33ef 0000 8002 0000000000000007 0000000e 00000005 0000 0000000100000000',
    ],
    ['clientFlags', serialize.clientFlags(3), '00000003'],
    ['option LIST', serialize.option(Option.LIST), `${IHAVEOPT} 00000003 00000000`],
    ['optExportName', serialize.optExportName('disk'), `${IHAVEOPT} 00000001 00000004 6469736b`],
    [
      'optInfoGo',
      serialize.optInfoGo(Option.GO, 'disk', [Info.BLOCK_SIZE]),
      `${IHAVEOPT} 00000007 0000000c 00000004 6469736b 0001 0003`,
    ],
    [
      'optMetaContext',
      serialize.optMetaContext(Option.SET_META_CONTEXT, 'd', ['base:']),
      `${IHAVEOPT} 0000000a 00000012 00000001 64 00000001 00000005 ${Buffer.from('base:').toString('hex')}`,
    ],
    [
      'request',
      serialize.request(CommandFlag.FUA, Command.WRITE, 0x0102030405060708n, 2 ** 32 + 512, 4096),
      '25609513 0001 0001 0102030405060708 0000000100000200 00001000',
    ],
  ];
  for (const [name, bytes, expected] of fixtures) {
    it(name, () => {
      expect(bytes.toString('hex')).toBe(hex(expected));
    });
  }
});

describe('server -> client: serialize, parse, decode (mirror)', () => {
  it('greeting', () => {
    for (const flags of [0, 1, 2, 3]) {
      expect(fromServer(serialize.greeting(flags), 'greeting')).toStrictEqual([
        { kind: 'greeting', handshakeFlags: flags },
      ]);
    }
  });

  it('option replies', () => {
    expect(decodedReply(serialize.ack(Option.LIST), Option.LIST)).toEqual({ reply: 'ACK' });
    expect(decodedReply(serialize.replyServer(Option.LIST, 'snap-é', 'taken at 12:00'), Option.LIST)).toEqual({
      reply: 'SERVER',
      name: 'snap-é',
      description: 'taken at 12:00',
    });
    expect(decodedReply(serialize.replyServer(Option.LIST, ''), Option.LIST)).toEqual({
      reply: 'SERVER',
      name: '',
      description: '',
    });
    for (const size of U64S) {
      expect(decodedReply(serialize.infoExport(Option.GO, size, 0x0ded), Option.GO)).toEqual({
        reply: 'INFO_EXPORT',
        size,
        transmissionFlags: 0x0ded,
      });
    }
    expect(decodedReply(serialize.infoName(Option.INFO, 'disk'), Option.INFO)).toEqual({
      reply: 'INFO_NAME',
      name: 'disk',
    });
    expect(decodedReply(serialize.infoDescription(Option.INFO, 'Ünïcode'), Option.INFO)).toEqual({
      reply: 'INFO_DESCRIPTION',
      description: 'Ünïcode',
    });
    const sizes = { minimum: 512, preferred: 65536, maximum: 0xffffffff };
    expect(decodedReply(serialize.infoBlockSize(Option.GO, sizes), Option.GO)).toEqual({
      reply: 'INFO_BLOCK_SIZE',
      ...sizes,
    });
    expect(
      decodedReply(serialize.metaContext(Option.SET_META_CONTEXT, 0xffffffff, 'qemu:dirty-bitmap:b0'), 10),
    ).toEqual({
      reply: 'META_CONTEXT',
      id: 0xffffffff,
      name: 'qemu:dirty-bitmap:b0',
    });
    for (const [name, type] of Object.entries(Reply).filter(([n]) => n.startsWith('ERR_'))) {
      expect(decodedReply(serialize.optionError(Option.GO, type, name), Option.GO)).toEqual({
        reply: 'ERROR',
        type,
        message: name,
      });
    }
  });

  it('EXPORT_NAME reply, with and without padding', () => {
    for (const noZeroes of [true, false]) {
      for (const size of U64S) {
        const p = new ClientParser({ phase: 'options' });
        p.expectExportNameReply(noZeroes);
        p.push(Buffer.concat([serialize.exportNameReply(size, 0x0587, noZeroes), serialize.simpleReply(0, 9n)]));
        expect(p.next()).toStrictEqual({ kind: 'exportNameReply', size, transmissionFlags: 0x0587 });
        expect(p.next()).toStrictEqual({ kind: 'simpleReply', error: 0, cookie: 9n });
      }
    }
  });

  it('simple replies keep cookies exactly, and carry READ data', () => {
    const data = Buffer.from('0123456789abcdef');
    for (const cookie of COOKIES) {
      const read = Buffer.concat([serialize.simpleReply(0, cookie), data]);
      expect(fromServer(read, 'transmission', 16)).toStrictEqual([{ kind: 'simpleReply', error: 0, cookie, data }]);
      const err = serialize.simpleReply(NbdError.ENOSPC, cookie);
      expect(fromServer(err, 'transmission', 16)).toStrictEqual([
        { kind: 'simpleReply', error: NbdError.ENOSPC, cookie },
      ]);
    }
  });

  it('structured chunks', () => {
    for (const cookie of COOKIES) {
      expect(decodedChunk(serialize.noneChunk(cookie), cookie, ReplyFlag.DONE)).toEqual({ chunk: 'NONE' });
    }
    for (const offset of U64S) {
      const data = Buffer.from([1, 2, 3, 4, 5]);
      const bytes = Buffer.concat([serialize.offsetDataHeader(3n, false, offset, data.length), data]);
      expect(decodedChunk(bytes, 3n, 0)).toEqual({ chunk: 'OFFSET_DATA', offset, data });
      expect(decodedChunk(serialize.offsetHoleChunk(3n, true, offset, 0xffffffff), 3n, ReplyFlag.DONE)).toEqual({
        chunk: 'OFFSET_HOLE',
        offset,
        length: 0xffffffff,
      });
      expect(decodedChunk(serialize.errorChunk(3n, false, NbdError.EIO, 'media error', offset), 3n, 0)).toEqual({
        chunk: 'ERROR_OFFSET',
        error: NbdError.EIO,
        message: 'media error',
        offset,
      });
    }
    const extents = [
      { length: 0xffffffff, flags: 0 },
      { length: 512, flags: 3 },
      { length: 4096, flags: 0xffffffff },
    ];
    expect(
      decodedChunk(serialize.blockStatusChunk(0xffffffffffffffffn, true, 2, extents), 0xffffffffffffffffn, 1),
    ).toEqual({
      chunk: 'BLOCK_STATUS',
      contextId: 2,
      extents,
    });
    expect(decodedChunk(serialize.errorChunk(4n, true, NbdError.ESHUTDOWN, 'bye'), 4n, 1)).toEqual({
      chunk: 'ERROR',
      error: NbdError.ESHUTDOWN,
      message: 'bye',
    });
  });

  it('cuts error chunk messages to 512 bytes without splitting a UTF-8 character', () => {
    const long = decodedChunk(serialize.errorChunk(1n, true, NbdError.EIO, 'x'.repeat(600)), 1n, 1);
    expect(long).toEqual({ chunk: 'ERROR', error: NbdError.EIO, message: 'x'.repeat(512) });
    // '€' is 3 bytes: at 511..513 it straddles the cut and must be dropped whole
    const euro = decodedChunk(serialize.errorChunk(1n, true, NbdError.EIO, `${'a'.repeat(511)}€`), 1n, 1);
    expect(euro).toEqual({ chunk: 'ERROR', error: NbdError.EIO, message: 'a'.repeat(511) });
    const fits = `${'a'.repeat(509)}€`; // exactly 512 bytes: kept as is
    expect(decodedChunk(serialize.errorChunk(1n, true, 5, fits), 1n, 1)).toMatchObject({ message: fits });
  });
});

describe('client -> server: serialize, parse, decode (mirror)', () => {
  it('client flags', () => {
    for (const flags of [0, 1, 3, 0xffffffff]) {
      expect(fromClient(serialize.clientFlags(flags), 'clientFlags')).toStrictEqual({ kind: 'clientFlags', flags });
    }
  });

  it('every option', () => {
    const cases: [Buffer, number, unknown][] = [
      [serialize.optExportName('snap-1'), Option.EXPORT_NAME, { option: 'EXPORT_NAME', name: 'snap-1' }],
      [serialize.option(Option.ABORT), Option.ABORT, { option: 'ABORT' }],
      [serialize.option(Option.LIST), Option.LIST, { option: 'LIST' }],
      [serialize.option(Option.STARTTLS), Option.STARTTLS, { option: 'STARTTLS' }],
      [
        serialize.optInfoGo(Option.INFO, 'é', [0, 1, 2, 3]),
        Option.INFO,
        { option: 'INFO', name: 'é', infos: [0, 1, 2, 3] },
      ],
      [serialize.optInfoGo(Option.GO, ''), Option.GO, { option: 'GO', name: '', infos: [] }],
      [serialize.option(Option.STRUCTURED_REPLY), Option.STRUCTURED_REPLY, { option: 'STRUCTURED_REPLY' }],
      [
        serialize.optMetaContext(Option.LIST_META_CONTEXT, 'disk', []),
        Option.LIST_META_CONTEXT,
        { option: 'LIST_META_CONTEXT', name: 'disk', queries: [] },
      ],
      [
        serialize.optMetaContext(Option.SET_META_CONTEXT, 'disk', ['base:allocation', 'qemu:dirty-bitmap:b0']),
        Option.SET_META_CONTEXT,
        { option: 'SET_META_CONTEXT', name: 'disk', queries: ['base:allocation', 'qemu:dirty-bitmap:b0'] },
      ],
      [serialize.option(Option.EXTENDED_HEADERS), Option.EXTENDED_HEADERS, { option: 'EXTENDED_HEADERS' }],
      [serialize.option(0x7654321, Buffer.from('abcd')), 0x7654321, { option: 'UNKNOWN', code: 0x7654321 }],
    ];
    for (const [bytes, code, decoded] of cases) {
      const m = fromClient(bytes, 'options');
      if (m.kind !== 'option') throw new Error(`expected an option, got ${m.kind}`);
      expect(m.option).toBe(code);
      expect(decodeOption(m.option, m.data)).toEqual(decoded);
    }
  });

  it('requests keep every field, cookies as exact bigints and offsets above 2^32', () => {
    for (const cookie of COOKIES) {
      for (const offset of U64S) {
        // every command but WRITE, whose length is followed by data (below)
        for (const type of Object.values(Command).filter((t) => t !== Command.WRITE)) {
          const m = fromClient(serialize.request(CommandFlag.FUA, type, cookie, offset, 0xffffffff), 'transmission');
          expect(m).toStrictEqual({
            kind: 'request',
            flags: CommandFlag.FUA,
            type,
            cookie,
            offset,
            length: 0xffffffff,
          });
        }
      }
    }
    const data = Buffer.from('written bytes');
    const bytes = Buffer.concat([serialize.request(0, Command.WRITE, 0xffffffffffffffffn, 2 ** 41, data.length), data]);
    expect(fromClient(bytes, 'transmission')).toStrictEqual({
      kind: 'request',
      flags: 0,
      type: Command.WRITE,
      cookie: 0xffffffffffffffffn,
      offset: 2 ** 41,
      length: data.length,
      data,
    });
  });
});

describe('serializer limits', () => {
  it('refuses strings over 4096 bytes with TOO_LARGE', () => {
    const tooLong = 'é'.repeat(2049); // 4098 bytes
    for (const fn of [
      () => serialize.optExportName('a'.repeat(4097)),
      () => serialize.optInfoGo(Option.GO, tooLong),
      () => serialize.optMetaContext(Option.SET_META_CONTEXT, 'disk', [tooLong]),
      () => serialize.replyServer(Option.LIST, 'disk', tooLong),
      () => serialize.optionError(Option.GO, Reply.ERR_INVALID, tooLong),
    ]) {
      expect(fn).toThrow(NbdProtocolError);
      expect(fn).toThrow(/4096/);
    }
    expect(serialize.optExportName('a'.repeat(4096))).toHaveLength(16 + 4096);
  });
});
