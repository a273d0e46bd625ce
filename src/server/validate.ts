/**
 * Central request validation, done once before any device sees a request (nbdkit's
 * validate_request). Devices and layers may then trust offset, length and flags.
 *
 * Order: unknown command, flags not valid for the command, read-only, zero length, range.
 * Out of range is ENOSPC for WRITE and WRITE_ZEROES and EINVAL otherwise, as the spec asks.
 */
import { CommandFlag as CF, Command, NbdError, type RequestMessage } from '../nbd-protocol/index.ts';
import { isReadOnly } from './exports.ts';
import type { Session } from './handshake.ts';

/** Largest READ or WRITE served (advertised maximum is 32 MiB; clients may send more). */
export const MAX_IO = 64 * 1024 * 1024;

export interface Rejection {
  error: number;
  message: string;
}

const ALLOWED_FLAGS: Record<number, number> = {
  [Command.READ]: CF.FUA | CF.DF,
  [Command.WRITE]: CF.FUA,
  [Command.FLUSH]: CF.FUA,
  [Command.TRIM]: CF.FUA,
  [Command.CACHE]: CF.FUA,
  [Command.WRITE_ZEROES]: CF.FUA | CF.NO_HOLE | CF.FAST_ZERO,
  [Command.BLOCK_STATUS]: CF.FUA | CF.REQ_ONE,
};

const reject = (error: number, message: string): Rejection => ({ error, message });

export function validateRequest(req: RequestMessage, session: Session): Rejection | undefined {
  const allowed = ALLOWED_FLAGS[req.type];
  if (allowed === undefined) return reject(NbdError.EINVAL, `unknown command ${req.type}`);
  if ((req.flags & ~allowed) !== 0) {
    return reject(NbdError.EINVAL, `flags 0x${req.flags.toString(16)} are not valid for this command`);
  }
  if ((req.flags & CF.DF) !== 0 && !session.structured) {
    return reject(NbdError.EINVAL, 'DF needs structured replies');
  }
  const writes = req.type === Command.WRITE || req.type === Command.TRIM || req.type === Command.WRITE_ZEROES;
  if (writes && isReadOnly(session.entry)) return reject(NbdError.EPERM, 'export is read-only');
  if (req.type === Command.FLUSH) {
    return req.offset === 0 && req.length === 0 ? undefined : reject(NbdError.EINVAL, 'FLUSH with offset or length');
  }
  if (req.discarded === true) {
    return reject(NbdError.EINVAL, `write of ${req.length} bytes exceeds the ${MAX_IO}-byte maximum`);
  }
  if (req.length === 0) return reject(NbdError.EINVAL, 'zero-length request');
  if (req.type === Command.READ && req.length > MAX_IO) {
    const df = (req.flags & CF.DF) !== 0;
    return reject(df ? NbdError.EOVERFLOW : NbdError.EINVAL, `read of ${req.length} bytes exceeds ${MAX_IO}`);
  }
  const size = session.entry.device.size;
  if (req.offset > size || req.length > size - req.offset) {
    const error = req.type === Command.WRITE || req.type === Command.WRITE_ZEROES ? NbdError.ENOSPC : NbdError.EINVAL;
    return reject(error, `request [${req.offset}, +${req.length}) is past the end (${size})`);
  }
  if (req.type === Command.BLOCK_STATUS && session.contexts.size === 0) {
    return reject(NbdError.EINVAL, 'BLOCK_STATUS without a selected metadata context');
  }
  return undefined;
}
