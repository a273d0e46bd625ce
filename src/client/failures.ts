/**
 * How a request of the client failed: an error reply of the server (`requestError`, the errno
 * name as the code), or the end of its connection (`connectionError`, told apart by
 * `isConnectionLoss`: src/remote sends the request again after a reconnect only then).
 */
import { NbdsnapError } from '../errors.ts';
import { nbdErrorName } from '../nbd-protocol/index.ts';

/** Errors that ended a connection (lost, closed, a protocol fault), as opposed to error replies. */
const connectionErrors = new WeakSet<object>();

/** Mark `err` as the end of a connection; returns it. */
export function connectionError<E extends object>(err: E): E {
  connectionErrors.add(err);
  return err;
}

/** Whether `err` rejected a request because the connection ended (not an error reply of the server). */
export function isConnectionLoss(err: unknown): boolean {
  return typeof err === 'object' && err !== null && connectionErrors.has(err);
}

const PASSED_ON = new Set(['EPERM', 'EIO', 'ENOMEM', 'EINVAL', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN']);

/** An error reply from the server, with the errno name as the code (EIO, EPERM, ...). */
export function requestError(errno: number, message: string): NbdsnapError {
  const name = nbdErrorName(errno);
  const code = (PASSED_ON.has(name) ? name : 'EIO') as 'EIO';
  return new NbdsnapError(code, message === '' ? `server error ${name}` : `${name}: ${message}`);
}
