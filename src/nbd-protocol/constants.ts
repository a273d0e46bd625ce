/**
 * NBD wire constants, with their values from the protocol (doc/proto.md) and their spec names.
 * All integers on the wire are big-endian. Grouped as `as const` objects so that each group is
 * also a union type (`NbdCommand`, `NbdOption`, ...).
 */

// --- magics ---------------------------------------------------------------------------------
/** "NBDMAGIC": first 8 bytes the server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": second server word in newstyle, and the prefix of every client option. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Second server word in the (unsupported) oldstyle handshake. */
export const NBD_CLISERV_MAGIC = 0x00420281861253n;
/** Prefix of every option reply. */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const NBD_EXTENDED_REQUEST_MAGIC = 0x21e41c71;

// --- handshake flags (server, u16) and client flags (u32) -----------------------------------
export const HandshakeFlag = {
  FIXED_NEWSTYLE: 0x0001, // NBD_FLAG_FIXED_NEWSTYLE
  NO_ZEROES: 0x0002, // NBD_FLAG_NO_ZEROES
} as const;
export const ClientFlag = {
  FIXED_NEWSTYLE: 0x0001, // NBD_FLAG_C_FIXED_NEWSTYLE
  NO_ZEROES: 0x0002, // NBD_FLAG_C_NO_ZEROES
} as const;

// --- options (u32) --------------------------------------------------------------------------
export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4, // withdrawn
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;
export type NbdOption = (typeof Option)[keyof typeof Option];

// --- option reply types (u32); errors have bit 31 set ---------------------------------------
export const Reply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
  ERR_EXT_HEADER_REQD: 0x8000000a,
} as const;
export type NbdReply = (typeof Reply)[keyof typeof Reply];
export const isErrorReply = (type: number): boolean => type >= 0x80000000;

// --- info types inside NBD_REP_INFO (u16) ---------------------------------------------------
export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;
export type NbdInfo = (typeof Info)[keyof typeof Info];

// --- transmission flags (u16) ---------------------------------------------------------------
export const TransmissionFlag = {
  HAS_FLAGS: 0x0001,
  READ_ONLY: 0x0002,
  SEND_FLUSH: 0x0004,
  SEND_FUA: 0x0008,
  ROTATIONAL: 0x0010,
  SEND_TRIM: 0x0020,
  SEND_WRITE_ZEROES: 0x0040,
  SEND_DF: 0x0080,
  CAN_MULTI_CONN: 0x0100,
  SEND_RESIZE: 0x0200,
  SEND_CACHE: 0x0400,
  SEND_FAST_ZERO: 0x0800,
  BLOCK_STATUS_PAYLOAD: 0x1000,
} as const;

// --- commands (u16) -------------------------------------------------------------------------
export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;
export type NbdCommand = (typeof Command)[keyof typeof Command];
export const commandName = (type: number): string =>
  Object.entries(Command).find(([, v]) => v === type)?.[0] ?? `CMD_${type}`;

// --- command flags (u16) --------------------------------------------------------------------
export const CommandFlag = {
  FUA: 0x01,
  NO_HOLE: 0x02,
  DF: 0x04,
  REQ_ONE: 0x08,
  FAST_ZERO: 0x10,
  PAYLOAD_LEN: 0x20,
} as const;

// --- structured reply flags and chunk types -------------------------------------------------
export const ReplyFlag = { DONE: 0x0001 } as const;
export const ChunkType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  BLOCK_STATUS_EXT: 6,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;
export type NbdChunkType = (typeof ChunkType)[keyof typeof ChunkType];
export const isErrorChunk = (type: number): boolean => (type & 0x8000) !== 0;

// --- error values (u32) ---------------------------------------------------------------------
export const NbdError = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdErrno = (typeof NbdError)[keyof typeof NbdError];
export const nbdErrorName = (value: number): string =>
  Object.entries(NbdError).find(([, v]) => v === value)?.[0] ?? `error ${value}`;

// --- metadata contexts ----------------------------------------------------------------------
export const BASE_ALLOCATION = 'base:allocation';
export const QEMU_ALLOCATION_DEPTH = 'qemu:allocation-depth';
export const QEMU_DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
export const AllocationState = { HOLE: 0x1, ZERO: 0x2 } as const;
export const DirtyState = { DIRTY: 0x1 } as const;

// --- fixed sizes ----------------------------------------------------------------------------
export const GREETING_SIZE = 18;
export const CLIENT_FLAGS_SIZE = 4;
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const CHUNK_HEADER_SIZE = 20;
export const EXPORT_NAME_REPLY_PADDING = 124;
/** Strings (names, descriptions, messages) must not be longer than this. */
export const MAX_STRING_LENGTH = 4096;
/** The payload every client may assume without NBD_INFO_BLOCK_SIZE: 32 MiB. */
export const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;
