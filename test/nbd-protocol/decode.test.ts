/**
 * Payload decoders: decodeOption (server side), decodeOptionReply and decodeChunk (client side).
 * Payloads are built by hand from the spec's layouts. Malformed payloads must throw a NON-fatal
 * NbdProtocolError: the message was framed correctly, so the stream is still in sync.
 */
import { describe, expect, it } from 'vitest';
import type { ProtocolErrorCode } from '../../src/nbd-protocol/index.ts';
import {
  ChunkType,
  decodeChunk,
  decodeOption,
  decodeOptionReply,
  Info,
  NbdError,
  NbdProtocolError,
  Option,
  Reply,
} from '../../src/nbd-protocol/index.ts';

import { hex, str, u16, u32, u64 } from './harness.ts';

const cat = (...parts: Buffer[]): Buffer => Buffer.concat(parts);
const EMPTY = Buffer.alloc(0);

/** Asserts fn throws a non-fatal NbdProtocolError with `code`. */
function expectSoftError(fn: () => unknown, code: ProtocolErrorCode): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(NbdProtocolError);
  const err = caught as NbdProtocolError;
  expect(err.name).toBe('NbdProtocolError');
  expect({ code: err.code, fatal: err.fatal }).toEqual({ code, fatal: false });
}

describe('decodeOption', () => {
  it('decodes every option', () => {
    expect(decodeOption(Option.EXPORT_NAME, str('disk'))).toEqual({ option: 'EXPORT_NAME', name: 'disk' });
    expect(decodeOption(Option.EXPORT_NAME, EMPTY)).toEqual({ option: 'EXPORT_NAME', name: '' });
    expect(decodeOption(Option.ABORT, EMPTY)).toEqual({ option: 'ABORT' });
    expect(decodeOption(Option.LIST, EMPTY)).toEqual({ option: 'LIST' });
    expect(decodeOption(Option.STARTTLS, EMPTY)).toEqual({ option: 'STARTTLS' });
    expect(decodeOption(Option.INFO, cat(u32(6), str('snap-1'), u16(2), u16(1), u16(3)))).toEqual({
      option: 'INFO',
      name: 'snap-1',
      infos: [Info.NAME, Info.BLOCK_SIZE],
    });
    expect(decodeOption(Option.GO, cat(u32(0), u16(0)))).toEqual({ option: 'GO', name: '', infos: [] });
    expect(decodeOption(Option.STRUCTURED_REPLY, EMPTY)).toEqual({ option: 'STRUCTURED_REPLY' });
    expect(decodeOption(Option.LIST_META_CONTEXT, cat(u32(4), str('disk'), u32(0)))).toEqual({
      option: 'LIST_META_CONTEXT',
      name: 'disk',
      queries: [],
    });
    const two = cat(u32(4), str('disk'), u32(2), u32(15), str('base:allocation'), u32(5), str('qemu:'));
    expect(decodeOption(Option.SET_META_CONTEXT, two)).toEqual({
      option: 'SET_META_CONTEXT',
      name: 'disk',
      queries: ['base:allocation', 'qemu:'],
    });
    expect(decodeOption(Option.EXTENDED_HEADERS, EMPTY)).toEqual({ option: 'EXTENDED_HEADERS' });
    expect(decodeOption(0x7654321, hex('01020304'))).toEqual({ option: 'UNKNOWN', code: 0x7654321 });
    expect(decodeOption(Option.PEEK_EXPORT, EMPTY)).toEqual({ option: 'UNKNOWN', code: 4 });
  });

  it('decodes UTF-8 names and keeps unknown info requests for the owner to ignore', () => {
    const name = 'disque-é€';
    const n = str(name);
    expect(decodeOption(Option.GO, cat(u32(n.length), n, u16(1), u16(0x7777)))).toEqual({
      option: 'GO',
      name,
      infos: [0x7777],
    });
  });

  it('ignores data on ABORT (the spec says SHOULD ignore)', () => {
    expect(decodeOption(Option.ABORT, hex('0102'))).toEqual({ option: 'ABORT' });
  });

  it('refuses data on options that must carry none', () => {
    for (const code of [Option.LIST, Option.STARTTLS, Option.STRUCTURED_REPLY, Option.EXTENDED_HEADERS]) {
      expectSoftError(() => decodeOption(code, hex('00')), 'BAD_OPTION_DATA');
    }
  });

  it('refuses INFO/GO whose namelen overruns the payload', () => {
    for (const code of [Option.INFO, Option.GO]) {
      // namelen 5 but only 4 name bytes and no info count
      expectSoftError(() => decodeOption(code, cat(u32(5), str('disk'))), 'BAD_OPTION_DATA');
      // namelen > length - 6: the name eats the info count
      expectSoftError(() => decodeOption(code, cat(u32(6), str('disk'), u16(0))), 'BAD_OPTION_DATA');
      // a namelen far beyond the payload (and beyond 4096) is still an overrun, not a long name
      expectSoftError(() => decodeOption(code, cat(u32(0xffffffff), u16(0))), 'BAD_OPTION_DATA');
    }
  });

  it('refuses INFO/GO with too few info entries, trailing bytes, or nothing at all', () => {
    expectSoftError(() => decodeOption(Option.GO, cat(u32(0), u16(2), u16(0))), 'BAD_OPTION_DATA');
    expectSoftError(() => decodeOption(Option.GO, cat(u32(0), u16(1), u16(0), hex('ff'))), 'BAD_OPTION_DATA');
    expectSoftError(() => decodeOption(Option.INFO, EMPTY), 'BAD_OPTION_DATA');
    expectSoftError(() => decodeOption(Option.INFO, cat(u32(0))), 'BAD_OPTION_DATA');
  });

  it('refuses malformed LIST/SET_META_CONTEXT payloads', () => {
    for (const code of [Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT]) {
      // query length runs past the data
      const overrun = cat(u32(4), str('disk'), u32(1), u32(16), str('base:allocation'));
      expectSoftError(() => decodeOption(code, overrun), 'BAD_OPTION_DATA');
      // more queries announced than present
      expectSoftError(
        () => decodeOption(code, cat(u32(4), str('disk'), u32(2), u32(5), str('base:'))),
        'BAD_OPTION_DATA',
      );
      // a huge query count with no data must fail fast, not loop
      expectSoftError(() => decodeOption(code, cat(u32(0), u32(0xffffffff))), 'BAD_OPTION_DATA');
      // trailing bytes
      expectSoftError(() => decodeOption(code, cat(u32(0), u32(0), hex('00'))), 'BAD_OPTION_DATA');
      // namelen overrun
      expectSoftError(() => decodeOption(code, cat(u32(9), str('disk'), u32(0))), 'BAD_OPTION_DATA');
    }
  });

  it('refuses strings longer than 4096 bytes with a non-fatal TOO_LARGE', () => {
    expect(decodeOption(Option.EXPORT_NAME, Buffer.alloc(4096, 0x61))).toMatchObject({ name: 'a'.repeat(4096) });
    expectSoftError(() => decodeOption(Option.EXPORT_NAME, Buffer.alloc(4097, 0x61)), 'TOO_LARGE');
    const long = Buffer.alloc(4097, 0x61);
    expectSoftError(() => decodeOption(Option.GO, cat(u32(long.length), long, u16(0))), 'TOO_LARGE');
  });
});

describe('decodeOptionReply', () => {
  const info = (type: number, ...rest: Buffer[]): Buffer => cat(u16(type), ...rest);

  it('decodes every reply type', () => {
    expect(decodeOptionReply(Reply.ACK, EMPTY)).toEqual({ reply: 'ACK' });
    expect(decodeOptionReply(Reply.SERVER, cat(u32(4), str('disk'), str('main disk')))).toEqual({
      reply: 'SERVER',
      name: 'disk',
      description: 'main disk',
    });
    expect(decodeOptionReply(Reply.SERVER, cat(u32(4), str('disk')))).toEqual({
      reply: 'SERVER',
      name: 'disk',
      description: '',
    });
    expect(decodeOptionReply(Reply.INFO, info(Info.EXPORT, u64(2n ** 40n + 512n), u16(0x0ded)))).toEqual({
      reply: 'INFO_EXPORT',
      size: 2 ** 40 + 512,
      transmissionFlags: 0x0ded,
    });
    expect(decodeOptionReply(Reply.INFO, info(Info.NAME, str('disk')))).toEqual({ reply: 'INFO_NAME', name: 'disk' });
    expect(decodeOptionReply(Reply.INFO, info(Info.DESCRIPTION, str('d')))).toEqual({
      reply: 'INFO_DESCRIPTION',
      description: 'd',
    });
    expect(decodeOptionReply(Reply.INFO, info(Info.BLOCK_SIZE, u32(1), u32(4096), u32(0xffffffff)))).toEqual({
      reply: 'INFO_BLOCK_SIZE',
      minimum: 1,
      preferred: 4096,
      maximum: 0xffffffff,
    });
    expect(decodeOptionReply(Reply.INFO, info(9, hex('abcd')))).toEqual({
      reply: 'INFO_UNKNOWN',
      info: 9,
      data: hex('abcd'),
    });
    expect(decodeOptionReply(Reply.META_CONTEXT, cat(u32(0xfffffffe), str('base:allocation')))).toEqual({
      reply: 'META_CONTEXT',
      id: 0xfffffffe,
      name: 'base:allocation',
    });
    expect(decodeOptionReply(77, hex('01'))).toEqual({ reply: 'UNKNOWN', type: 77, data: hex('01') });
  });

  it('decodes every error type (bit 31 set) with or without a message', () => {
    const errors = Object.entries(Reply).filter(([name]) => name.startsWith('ERR_'));
    expect(errors).toHaveLength(10);
    for (const [, type] of errors) {
      expect(decodeOptionReply(type, str('why'))).toEqual({ reply: 'ERROR', type, message: 'why' });
      expect(decodeOptionReply(type, EMPTY)).toEqual({ reply: 'ERROR', type, message: '' });
    }
    // an unknown error type is still an error
    expect(decodeOptionReply(0x8000007f, EMPTY)).toEqual({ reply: 'ERROR', type: 0x8000007f, message: '' });
  });

  it('refuses malformed replies with a non-fatal BAD_REPLY', () => {
    expectSoftError(() => decodeOptionReply(Reply.ACK, hex('00')), 'BAD_REPLY');
    expectSoftError(() => decodeOptionReply(Reply.SERVER, cat(u32(5), str('disk'))), 'BAD_REPLY');
    expectSoftError(() => decodeOptionReply(Reply.SERVER, hex('0000')), 'BAD_REPLY');
    expectSoftError(() => decodeOptionReply(Reply.META_CONTEXT, hex('000000')), 'BAD_REPLY');
    expectSoftError(() => decodeOptionReply(Reply.INFO, EMPTY), 'BAD_REPLY');
    // NBD_INFO_EXPORT is exactly 12 bytes, NBD_INFO_BLOCK_SIZE exactly 14
    expectSoftError(() => decodeOptionReply(Reply.INFO, info(Info.EXPORT, u64(1n))), 'BAD_REPLY');
    expectSoftError(() => decodeOptionReply(Reply.INFO, info(Info.EXPORT, u64(1n), u16(1), hex('00'))), 'BAD_REPLY');
    expectSoftError(() => decodeOptionReply(Reply.INFO, info(Info.BLOCK_SIZE, u32(1), u32(1))), 'BAD_REPLY');
    expectSoftError(
      () => decodeOptionReply(Reply.INFO, info(Info.BLOCK_SIZE, u32(1), u32(1), u32(1), hex('00'))),
      'BAD_REPLY',
    );
  });
});

describe('decodeChunk', () => {
  it('decodes every chunk type', () => {
    expect(decodeChunk(ChunkType.NONE, EMPTY)).toEqual({ chunk: 'NONE' });
    expect(decodeChunk(ChunkType.OFFSET_DATA, cat(u64(2n ** 33n), hex('aabb')))).toEqual({
      chunk: 'OFFSET_DATA',
      offset: 2 ** 33,
      data: hex('aabb'),
    });
    expect(decodeChunk(ChunkType.OFFSET_HOLE, cat(u64(2n ** 33n + 2n), u32(4094)))).toEqual({
      chunk: 'OFFSET_HOLE',
      offset: 2 ** 33 + 2,
      length: 4094,
    });
    expect(decodeChunk(ChunkType.BLOCK_STATUS, cat(u32(1), u32(65536), u32(0), u32(4096), u32(3)))).toEqual({
      chunk: 'BLOCK_STATUS',
      contextId: 1,
      extents: [
        { length: 65536, flags: 0 },
        { length: 4096, flags: 3 },
      ],
    });
    expect(decodeChunk(ChunkType.ERROR, cat(u32(NbdError.EINVAL), u16(3), str('bad')))).toEqual({
      chunk: 'ERROR',
      error: NbdError.EINVAL,
      message: 'bad',
    });
    expect(decodeChunk(ChunkType.ERROR, cat(u32(NbdError.EIO), u16(0)))).toEqual({
      chunk: 'ERROR',
      error: NbdError.EIO,
      message: '',
    });
    expect(decodeChunk(ChunkType.ERROR_OFFSET, cat(u32(NbdError.EIO), u16(2), str('io'), u64(2n ** 40n)))).toEqual({
      chunk: 'ERROR_OFFSET',
      error: NbdError.EIO,
      message: 'io',
      offset: 2 ** 40,
    });
    expect(decodeChunk(3, hex('01'))).toEqual({ chunk: 'UNKNOWN', type: 3, data: hex('01') });
    expect(decodeChunk(ChunkType.BLOCK_STATUS_EXT, hex('02'))).toEqual({
      chunk: 'UNKNOWN',
      type: ChunkType.BLOCK_STATUS_EXT,
      data: hex('02'),
    });
  });

  it('refuses malformed chunks with a non-fatal BAD_REPLY', () => {
    const bad: [string, number, Buffer][] = [
      ['NONE with a payload', ChunkType.NONE, hex('00')],
      ['OFFSET_DATA without data', ChunkType.OFFSET_DATA, u64(0n)],
      ['OFFSET_DATA shorter than its offset', ChunkType.OFFSET_DATA, hex('0000')],
      ['OFFSET_HOLE of length 0', ChunkType.OFFSET_HOLE, cat(u64(0n), u32(0))],
      ['OFFSET_HOLE of 11 bytes', ChunkType.OFFSET_HOLE, cat(u64(0n), hex('000001'))],
      ['OFFSET_HOLE of 13 bytes', ChunkType.OFFSET_HOLE, cat(u64(0n), u32(1), hex('00'))],
      ['BLOCK_STATUS without descriptors', ChunkType.BLOCK_STATUS, u32(1)],
      ['BLOCK_STATUS with a ragged descriptor', ChunkType.BLOCK_STATUS, cat(u32(1), u32(512), hex('0000'))],
      ['ERROR with msglen past the end', ChunkType.ERROR, cat(u32(5), u16(10), str('short'))],
      ['ERROR with trailing bytes', ChunkType.ERROR, cat(u32(5), u16(1), str('ab'))],
      ['ERROR shorter than 6 bytes', ChunkType.ERROR, u32(5)],
      ['ERROR_OFFSET without its offset', ChunkType.ERROR_OFFSET, cat(u32(5), u16(2), str('io'))],
      ['ERROR_OFFSET with trailing bytes', ChunkType.ERROR_OFFSET, cat(u32(5), u16(0), u64(0n), hex('00'))],
    ];
    for (const [what, type, data] of bad) {
      expect(() => decodeChunk(type, data), what).toThrow(NbdProtocolError);
      expectSoftError(() => decodeChunk(type, data), 'BAD_REPLY');
    }
  });
});
