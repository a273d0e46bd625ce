/**
 * Decoders for message payloads, pure and shared by both sides: an option's data (server side),
 * an option reply's data and a structured chunk's data (client side). Malformed payloads throw
 * a non-fatal NbdProtocolError: the message was framed correctly, so the stream is in sync and
 * the receiver can answer it (a server with NBD_REP_ERR_INVALID).
 */
import { ChunkType, Info, isErrorReply, Option, Reply } from './constants.ts';
import { NbdProtocolError } from './errors.ts';
import type { Extent, ParsedChunk, ParsedOption, ParsedOptionReply } from './messages.ts';
import { Reader } from './wire.ts';

/** Decode NBD_OPT_* data. Options that must carry no data are refused if they do. */
export function decodeOption(option: number, data: Buffer): ParsedOption {
  const r = new Reader(data, optionLabel(option));
  switch (option) {
    case Option.EXPORT_NAME:
      return { option: 'EXPORT_NAME', name: r.rest() };
    case Option.ABORT:
      return { option: 'ABORT' }; // data SHOULD be ignored
    case Option.LIST:
      r.end();
      return { option: 'LIST' };
    case Option.STARTTLS:
      r.end();
      return { option: 'STARTTLS' };
    case Option.STRUCTURED_REPLY:
      r.end();
      return { option: 'STRUCTURED_REPLY' };
    case Option.EXTENDED_HEADERS:
      r.end();
      return { option: 'EXTENDED_HEADERS' };
    case Option.INFO:
    case Option.GO: {
      const name = r.string(r.u32());
      const count = r.u16();
      const infos: number[] = [];
      for (let i = 0; i < count; i++) infos.push(r.u16());
      r.end();
      return { option: option === Option.GO ? 'GO' : 'INFO', name, infos };
    }
    case Option.LIST_META_CONTEXT:
    case Option.SET_META_CONTEXT: {
      const name = r.string(r.u32());
      const count = r.u32();
      const queries: string[] = [];
      for (let i = 0; i < count; i++) queries.push(r.string(r.u32()));
      r.end();
      const which = option === Option.SET_META_CONTEXT ? 'SET_META_CONTEXT' : 'LIST_META_CONTEXT';
      return { option: which, name, queries };
    }
    default:
      return { option: 'UNKNOWN', code: option };
  }
}

/** Decode an option reply's data by its reply type. */
export function decodeOptionReply(type: number, data: Buffer): ParsedOptionReply {
  const r = new Reader(data, `option reply ${type}`);
  try {
    if (isErrorReply(type)) return { reply: 'ERROR', type, message: r.rest() };
    switch (type) {
      case Reply.ACK:
        r.end();
        return { reply: 'ACK' };
      case Reply.SERVER: {
        const name = r.string(r.u32());
        return { reply: 'SERVER', name, description: r.rest() };
      }
      case Reply.META_CONTEXT: {
        const id = r.u32();
        return { reply: 'META_CONTEXT', id, name: r.rest() };
      }
      case Reply.INFO:
        return decodeInfo(r);
      default:
        return { reply: 'UNKNOWN', type, data };
    }
  } catch (err) {
    if (err instanceof NbdProtocolError && err.code === 'BAD_OPTION_DATA') {
      throw badReply(err.message);
    }
    throw err;
  }
}

function decodeInfo(r: Reader): ParsedOptionReply {
  const info = r.u16();
  switch (info) {
    case Info.EXPORT: {
      const size = r.u64();
      const transmissionFlags = r.u16();
      r.end();
      return { reply: 'INFO_EXPORT', size, transmissionFlags };
    }
    case Info.NAME:
      return { reply: 'INFO_NAME', name: r.rest() };
    case Info.DESCRIPTION:
      return { reply: 'INFO_DESCRIPTION', description: r.rest() };
    case Info.BLOCK_SIZE: {
      const minimum = r.u32();
      const preferred = r.u32();
      const maximum = r.u32();
      r.end();
      return { reply: 'INFO_BLOCK_SIZE', minimum, preferred, maximum };
    }
    default:
      return { reply: 'INFO_UNKNOWN', info, data: r.bytes(r.remaining) };
  }
}

/** Decode a structured reply chunk's data by its chunk type. */
export function decodeChunk(type: number, data: Buffer): ParsedChunk {
  const r = new Reader(data, `reply chunk ${type}`);
  try {
    switch (type) {
      case ChunkType.NONE:
        r.end();
        return { chunk: 'NONE' };
      case ChunkType.OFFSET_DATA: {
        const offset = r.u64();
        if (r.remaining === 0) throw badReply('OFFSET_DATA chunk without data');
        return { chunk: 'OFFSET_DATA', offset, data: r.bytes(r.remaining) };
      }
      case ChunkType.OFFSET_HOLE: {
        const offset = r.u64();
        const length = r.u32();
        r.end();
        if (length === 0) throw badReply('OFFSET_HOLE chunk of length 0');
        return { chunk: 'OFFSET_HOLE', offset, length };
      }
      case ChunkType.BLOCK_STATUS: {
        const contextId = r.u32();
        if (r.remaining === 0 || r.remaining % 8 !== 0) {
          throw badReply(`BLOCK_STATUS chunk with ${r.remaining} descriptor bytes`);
        }
        const extents: Extent[] = [];
        while (r.remaining > 0) extents.push({ length: r.u32(), flags: r.u32() });
        return { chunk: 'BLOCK_STATUS', contextId, extents };
      }
      case ChunkType.ERROR:
      case ChunkType.ERROR_OFFSET: {
        const error = r.u32();
        const message = r.string(r.u16());
        if (type === ChunkType.ERROR) {
          r.end();
          return { chunk: 'ERROR', error, message };
        }
        const offset = r.u64();
        r.end();
        return { chunk: 'ERROR_OFFSET', error, message, offset };
      }
      default:
        return { chunk: 'UNKNOWN', type, data };
    }
  } catch (err) {
    if (err instanceof NbdProtocolError && err.code === 'BAD_OPTION_DATA') {
      throw badReply(err.message);
    }
    throw err;
  }
}

function badReply(message: string): NbdProtocolError {
  return new NbdProtocolError('BAD_REPLY', message, false);
}

function optionLabel(option: number): string {
  const name = Object.entries(Option).find(([, v]) => v === option)?.[0];
  return name === undefined ? `option ${option}` : `NBD_OPT_${name}`;
}
