/**
 * The CLI side of the control socket: send one command and wait for its response, or stream
 * events (until the server ends the stream with its response, e.g. when it stops). Errors from
 * the server come back as NbdsnapError with the server's code.
 */
import { connect } from 'node:net';
import { NbdsnapError, type UsageCode } from '../errors.ts';
import { LineReader, type Response } from './protocol.ts';

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
    const reader = new LineReader();
    let settled = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      socket.end();
      fn();
    };
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? 'is nbdsnap serve running with --control?' : err.message;
      settle(() => reject(new NbdsnapError('NOT_FOUND', `cannot reach control socket ${path}: ${why}`)));
    });
    socket.on('connect', () => socket.write(`${JSON.stringify({ id: 1, cmd, args })}\n`));
    socket.on('data', (chunk: Buffer) => {
      for (const line of reader.push(chunk)) {
        let msg: Response;
        try {
          msg = JSON.parse(line) as Response;
        } catch {
          settle(() => reject(new NbdsnapError('EIO', `control socket ${path} answered something not JSON`)));
          return;
        }
        if ('event' in msg) {
          if (!settled) onEvent?.(msg.event);
        } else if (msg.ok) settle(() => resolve(msg.result));
        else settle(() => reject(new NbdsnapError(msg.error.code as UsageCode, msg.error.message)));
      }
    });
    socket.on('close', () =>
      settle(() => reject(new NbdsnapError('EIO', `control socket ${path} closed before answering`))),
    );
  });
}
