/**
 * nbd-protocol-ts: the NBD protocol as a library with no I/O. Incremental parsers for both
 * directions, decoders for message payloads, pure serializers, and the wire constants.
 * Nothing here opens a socket or imports from the rest of nbdsnap. See README.md.
 */

export { BufferList } from './buffer-list.ts';
export { ClientParser, type ClientParserOptions, type ClientParserPhase } from './client-parser.ts';
export * from './constants.ts';
export { decodeChunk, decodeOption, decodeOptionReply } from './decode.ts';
export { NbdProtocolError, type ProtocolErrorCode } from './errors.ts';
export type * from './messages.ts';
export * as serialize from './serializer.ts';
export { ServerParser, type ServerParserOptions, type ServerParserPhase } from './server-parser.ts';
export { readU64, writeU64 } from './wire.ts';
