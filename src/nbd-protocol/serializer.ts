/**
 * Pure encoders for every message, both directions. Each returns a Buffer ready to write; the
 * encoders of replies that carry bulk data (READ replies, OFFSET_DATA chunks) and of WRITE
 * requests return only the header, so the caller can write header and data back to back
 * without copying the data.
 */
import {
  CHUNK_HEADER_SIZE,
  ChunkType,
  EXPORT_NAME_REPLY_PADDING,
  Info,
  NBD_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  OPTION_REPLY_HEADER_SIZE,
  Option,
  REQUEST_HEADER_SIZE,
  Reply,
  ReplyFlag,
  SIMPLE_REPLY_SIZE,
} from './constants.ts';
import type { BlockSizes, Extent } from './messages.ts';
import { stringBytes, writeU64 } from './wire.ts';

// ================================================================ server -> client: handshake

export function greeting(handshakeFlags: number): Buffer {
  const b = Buffer.allocUnsafe(18);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** One option reply: header plus payload. */
export function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

export const ack = (option: number): Buffer => optionReply(option, Reply.ACK);

/** An NBD_REP_ERR_* reply with a short human message. */
export function optionError(option: number, type: number, message = ''): Buffer {
  return optionReply(option, type, stringBytes(message, 'error message'));
}

export function replyServer(option: number, name: string, description = ''): Buffer {
  const n = stringBytes(name, 'export name');
  const d = stringBytes(description, 'description');
  const data = Buffer.allocUnsafe(4 + n.length + d.length);
  data.writeUInt32BE(n.length, 0);
  n.copy(data, 4);
  d.copy(data, 4 + n.length);
  return optionReply(option, Reply.SERVER, data);
}

export function infoExport(option: number, size: number, transmissionFlags: number): Buffer {
  const data = Buffer.allocUnsafe(12);
  data.writeUInt16BE(Info.EXPORT, 0);
  writeU64(data, size, 2);
  data.writeUInt16BE(transmissionFlags, 10);
  return optionReply(option, Reply.INFO, data);
}

function infoString(option: number, info: number, text: string): Buffer {
  const s = stringBytes(text, 'info string');
  const data = Buffer.allocUnsafe(2 + s.length);
  data.writeUInt16BE(info, 0);
  s.copy(data, 2);
  return optionReply(option, Reply.INFO, data);
}

export const infoName = (option: number, name: string): Buffer => infoString(option, Info.NAME, name);
export const infoDescription = (option: number, text: string): Buffer => infoString(option, Info.DESCRIPTION, text);

export function infoBlockSize(option: number, sizes: BlockSizes): Buffer {
  const data = Buffer.allocUnsafe(14);
  data.writeUInt16BE(Info.BLOCK_SIZE, 0);
  data.writeUInt32BE(sizes.minimum, 2);
  data.writeUInt32BE(sizes.preferred, 6);
  data.writeUInt32BE(sizes.maximum >>> 0, 10);
  return optionReply(option, Reply.INFO, data);
}

export function metaContext(option: number, id: number, name: string): Buffer {
  const n = stringBytes(name, 'context name');
  const data = Buffer.allocUnsafe(4 + n.length);
  data.writeUInt32BE(id >>> 0, 0);
  n.copy(data, 4);
  return optionReply(option, Reply.META_CONTEXT, data);
}

/** Reply to a successful NBD_OPT_EXPORT_NAME (no option-reply framing). */
export function exportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_REPLY_PADDING));
  writeU64(b, size, 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

// ============================================================= server -> client: transmission

/** A simple reply header; a successful READ's data follows it on the wire. */
export function simpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error >>> 0, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

/** A structured chunk header for a payload of `length` bytes. */
export function chunkHeader(flags: number, type: number, cookie: bigint, length: number): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE);
  writeChunkHeader(b, flags, type, cookie, length);
  return b;
}

function writeChunkHeader(b: Buffer, flags: number, type: number, cookie: bigint, length: number) {
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(length, 16);
}

const doneFlag = (done: boolean): number => (done ? ReplyFlag.DONE : 0);

export const noneChunk = (cookie: bigint): Buffer => chunkHeader(ReplyFlag.DONE, ChunkType.NONE, cookie, 0);

/** Header and offset of an OFFSET_DATA chunk; `dataLength` bytes of data follow it. */
export function offsetDataHeader(cookie: bigint, done: boolean, offset: number, dataLength: number) {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 8);
  writeChunkHeader(b, doneFlag(done), ChunkType.OFFSET_DATA, cookie, 8 + dataLength);
  writeU64(b, offset, CHUNK_HEADER_SIZE);
  return b;
}

export function offsetHoleChunk(cookie: bigint, done: boolean, offset: number, length: number) {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 12);
  writeChunkHeader(b, doneFlag(done), ChunkType.OFFSET_HOLE, cookie, 12);
  writeU64(b, offset, CHUNK_HEADER_SIZE);
  b.writeUInt32BE(length, CHUNK_HEADER_SIZE + 8);
  return b;
}

export function blockStatusChunk(cookie: bigint, done: boolean, contextId: number, extents: readonly Extent[]): Buffer {
  const length = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + length);
  writeChunkHeader(b, doneFlag(done), ChunkType.BLOCK_STATUS, cookie, length);
  b.writeUInt32BE(contextId >>> 0, CHUNK_HEADER_SIZE);
  let o = CHUNK_HEADER_SIZE + 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length >>> 0, o);
    b.writeUInt32BE(e.flags >>> 0, o + 4);
    o += 8;
  }
  return b;
}

/** An ERROR chunk, or ERROR_OFFSET when `offset` is given. Messages are cut to 512 bytes. */
export function errorChunk(cookie: bigint, done: boolean, error: number, message: string, offset?: number): Buffer {
  // qemu drops the connection on a non-data chunk over 1000 bytes: keep messages short.
  const full = Buffer.from(message, 'utf8');
  let cut = Math.min(full.length, 512);
  // Never cut inside a UTF-8 character: back off over continuation bytes (10xxxxxx).
  while (cut < full.length && cut > 0 && ((full[cut] as number) & 0xc0) === 0x80) cut--;
  const m = full.subarray(0, cut);
  const withOffset = offset !== undefined;
  const length = 6 + m.length + (withOffset ? 8 : 0);
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + length);
  const type = withOffset ? ChunkType.ERROR_OFFSET : ChunkType.ERROR;
  writeChunkHeader(b, doneFlag(done), type, cookie, length);
  b.writeUInt32BE(error >>> 0, CHUNK_HEADER_SIZE);
  b.writeUInt16BE(m.length, CHUNK_HEADER_SIZE + 4);
  m.copy(b, CHUNK_HEADER_SIZE + 6);
  if (withOffset) writeU64(b, offset, CHUNK_HEADER_SIZE + 6 + m.length);
  return b;
}

// ================================================================ client -> server: handshake

export function clientFlags(flags: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** An option with raw data. */
export function option(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(16 + data.length);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  b.writeUInt32BE(code >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, 16);
  return b;
}

export const optExportName = (name: string): Buffer => option(Option.EXPORT_NAME, stringBytes(name, 'export name'));

/** NBD_OPT_INFO or NBD_OPT_GO for `name`, requesting `infos`. */
export function optInfoGo(code: number, name: string, infos: readonly number[] = []): Buffer {
  const n = stringBytes(name, 'export name');
  const data = Buffer.allocUnsafe(4 + n.length + 2 + 2 * infos.length);
  data.writeUInt32BE(n.length, 0);
  n.copy(data, 4);
  data.writeUInt16BE(infos.length, 4 + n.length);
  for (const [i, info] of infos.entries()) data.writeUInt16BE(info, 6 + n.length + 2 * i);
  return option(code, data);
}

/** NBD_OPT_LIST_META_CONTEXT or NBD_OPT_SET_META_CONTEXT. */
export function optMetaContext(code: number, name: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const n = stringBytes(name, 'export name');
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(n.length, 0);
  parts.push(head, n, u32(queries.length));
  for (const q of queries) {
    const qb = stringBytes(q, 'context query');
    parts.push(u32(qb.length), qb);
  }
  return option(code, Buffer.concat(parts));
}

function u32(v: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
}

// ============================================================= client -> server: transmission

/** A request header; a WRITE's `length` bytes of data follow it on the wire. */
export function request(flags: number, type: number, cookie: bigint, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  b.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  writeU64(b, offset, 16);
  b.writeUInt32BE(length >>> 0, 24);
  return b;
}
