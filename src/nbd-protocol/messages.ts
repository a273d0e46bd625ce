/**
 * Typed NBD messages. Each union is what one parser yields and what the serializer for the
 * other direction takes. Offsets and sizes are plain numbers (exact up to 2^53, far beyond any
 * device); a 64-bit value above that is kept as the nearest number, which is still out of range
 * for every export, so validation rejects it. Cookies are opaque and kept exactly, as bigint.
 */

// ---------------------------------------------------------------- client -> server, handshake
export interface ClientFlagsMessage {
  kind: 'clientFlags';
  flags: number;
}

/** An option as framed on the wire: its code and raw payload. See `decodeOption`. */
export interface OptionMessage {
  kind: 'option';
  option: number;
  data: Buffer;
}

/** An option's payload, decoded by `decodeOption`. */
export type ParsedOption =
  | { option: 'EXPORT_NAME'; name: string }
  | { option: 'ABORT' }
  | { option: 'LIST' }
  | { option: 'STARTTLS' }
  | { option: 'INFO' | 'GO'; name: string; infos: number[] }
  | { option: 'STRUCTURED_REPLY' }
  | { option: 'EXTENDED_HEADERS' }
  | { option: 'LIST_META_CONTEXT' | 'SET_META_CONTEXT'; name: string; queries: string[] }
  | { option: 'UNKNOWN'; code: number };

// --------------------------------------------------------------- client -> server, transmission
export interface RequestMessage {
  kind: 'request';
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
  /** WRITE payload (absent for other commands, and for a WRITE whose payload was discarded). */
  data?: Buffer;
  /** True when a WRITE payload exceeded the parser's maximum and was read and discarded. */
  discarded?: boolean;
}

export type ClientMessage = ClientFlagsMessage | OptionMessage | RequestMessage;

// ---------------------------------------------------------------- server -> client, handshake
export interface GreetingMessage {
  kind: 'greeting';
  handshakeFlags: number;
}

export interface OptionReplyMessage {
  kind: 'optionReply';
  option: number;
  type: number;
  data: Buffer;
}

/** The reply to a successful NBD_OPT_EXPORT_NAME. */
export interface ExportNameReplyMessage {
  kind: 'exportNameReply';
  size: number;
  transmissionFlags: number;
}

/** An option reply's payload, decoded by `decodeOptionReply`. */
export type ParsedOptionReply =
  | { reply: 'ACK' }
  | { reply: 'SERVER'; name: string; description: string }
  | { reply: 'INFO_EXPORT'; size: number; transmissionFlags: number }
  | { reply: 'INFO_NAME'; name: string }
  | { reply: 'INFO_DESCRIPTION'; description: string }
  | { reply: 'INFO_BLOCK_SIZE'; minimum: number; preferred: number; maximum: number }
  | { reply: 'INFO_UNKNOWN'; info: number; data: Buffer }
  | { reply: 'META_CONTEXT'; id: number; name: string }
  | { reply: 'ERROR'; type: number; message: string }
  | { reply: 'UNKNOWN'; type: number; data: Buffer };

// ------------------------------------------------------------- server -> client, transmission
export interface SimpleReplyMessage {
  kind: 'simpleReply';
  error: number;
  cookie: bigint;
  /** Read data, present for a successful reply to a READ. */
  data?: Buffer;
}

export interface ChunkMessage {
  kind: 'chunk';
  flags: number;
  type: number;
  cookie: bigint;
  data: Buffer;
}

export type ServerMessage =
  | GreetingMessage
  | OptionReplyMessage
  | ExportNameReplyMessage
  | SimpleReplyMessage
  | ChunkMessage;

/** A structured chunk's payload, decoded by `decodeChunk`. */
export type ParsedChunk =
  | { chunk: 'NONE' }
  | { chunk: 'OFFSET_DATA'; offset: number; data: Buffer }
  | { chunk: 'OFFSET_HOLE'; offset: number; length: number }
  | { chunk: 'BLOCK_STATUS'; contextId: number; extents: Extent[] }
  | { chunk: 'ERROR'; error: number; message: string }
  | { chunk: 'ERROR_OFFSET'; error: number; message: string; offset: number }
  | { chunk: 'UNKNOWN'; type: number; data: Buffer };

/** One block-status descriptor: `length` bytes with `flags` (context-specific meaning). */
export interface Extent {
  length: number;
  flags: number;
}

/** Export facts a server sends in NBD_INFO_BLOCK_SIZE. */
export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}
