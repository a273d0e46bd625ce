/**
 * The protocol package's one error class. `code` says what went wrong in a form a caller can
 * switch on; `fatal` says whether the byte stream is still in sync (false: the peer sent a
 * well-framed but invalid message, and the session can answer it and carry on).
 */
export type ProtocolErrorCode =
  | 'BAD_MAGIC' // a magic number is wrong: the stream is not NBD, or out of sync
  | 'BAD_FLAGS' // client or handshake flags with unknown bits
  | 'OLDSTYLE' // the server speaks the oldstyle handshake, which is not supported
  | 'BAD_OPTION_DATA' // an option's payload does not match its declared layout
  | 'BAD_REPLY' // an option reply or transmission reply is malformed
  | 'TOO_LARGE' // a length field exceeds what this side accepts
  | 'UNEXPECTED'; // a message arrived in a phase where it is not allowed

export class NbdProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  readonly fatal: boolean;

  constructor(code: ProtocolErrorCode, message: string, fatal = true) {
    super(message);
    this.name = 'NbdProtocolError';
    this.code = code;
    this.fatal = fatal;
  }
}
