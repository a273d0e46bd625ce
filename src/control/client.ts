/**
 * The CLI side of the control socket: send one command and wait for its response, or stream
 * events. Errors from the server come back as NbdsnapError with the server's code.
 */
import { connect } from 'node:net';
import { NbdsnapError, type UsageCode } from '../errors.ts';
import { type Response, splitLines } from './protocol.ts';

/** The control socket path: --control, else $NBDSNAP_CONTROL. */
export function controlPath(flag: string | undefined): string {
  const path = flag ?? process.env.NBDSNAP_CONTROL;
  if (path === undefined || path === '') {
    throw new NbdsnapError('BAD_ARGUMENT', 'no control socket: pass --control PATH or set NBDSNAP_CONTROL');
  }
  return path;
}

export function call(
  path: string,
  cmd: string,
  args: Record<string, unknown> = {},
  onEvent?: (e: unknown) => void,
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path });
    let buffer = '';
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? 'is nbdsnap serve running with --control?' : err.message;
      reject(new NbdsnapError('NOT_FOUND', `cannot reach control socket ${path}: ${why}`));
    });
    socket.on('connect', () => socket.write(`${JSON.stringify({ id: 1, cmd, args })}\n`));
    socket.on('data', (chunk: Buffer) => {
      buffer = splitLines(buffer + chunk.toString('utf8'), (line) => {
        const msg = JSON.parse(line) as Response;
        if ('event' in msg) onEvent?.(msg.event);
        else {
          socket.end();
          if (msg.ok) resolve(msg.result);
          else reject(new NbdsnapError(msg.error.code as UsageCode, msg.error.message));
        }
      });
    });
    socket.on('close', () => reject(new NbdsnapError('EIO', 'control socket closed before answering')));
  });
}
