/**
 * nbdsnap's one error family. Every error the server or CLI raises on purpose is an
 * NbdsnapError with a `code`: an errno name for I/O faults (mapped to the NBD error a client
 * sees by `toNbdError`) or a word for configuration and usage faults (printed as one line).
 */
import { NbdError } from './nbd-protocol/index.ts';

export type ErrnoCode = 'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW' | 'ENOTSUP' | 'ESHUTDOWN';
export type UsageCode = 'BAD_ARGUMENT' | 'BAD_CONFIG' | 'NOT_FOUND' | 'EXISTS' | 'CORRUPT' | 'BUSY';

export class NbdsnapError extends Error {
  readonly code: ErrnoCode | UsageCode;

  constructor(code: ErrnoCode | UsageCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NbdsnapError';
    this.code = code;
  }
}

/** The NBD error value for any thrown error (Node system errors included), nbdkit's mapping. */
export function toNbdError(err: unknown): number {
  const code = (err as { code?: unknown } | null)?.code;
  switch (code) {
    case 'EPERM':
    case 'EROFS':
    case 'EACCES':
      return NbdError.EPERM;
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NbdError.ENOSPC;
    case 'EINVAL':
      return NbdError.EINVAL;
    case 'ENOMEM':
      return NbdError.ENOMEM;
    case 'EOVERFLOW':
      return NbdError.EOVERFLOW;
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return NbdError.ENOTSUP;
    case 'ESHUTDOWN':
      return NbdError.ESHUTDOWN;
    default:
      return NbdError.EIO;
  }
}

export const errorMessage = (err: unknown): string => (err instanceof Error ? err.message : String(err));
