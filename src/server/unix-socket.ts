/**
 * A Unix socket path a server is about to listen on (the `-k` socket, the control socket). A
 * live server's socket is never taken over: an existing path is connected to first; a listener
 * answering means another server owns it (refused), ECONNREFUSED means it is stale (its server
 * is gone) and it is removed. A path that is not a socket is refused and left as it is.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { createConnection } from 'node:net';
import { NbdsnapError } from '../errors.ts';

export async function takeSocketPath(path: string, what: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new NbdsnapError('BAD_ARGUMENT', `cannot use ${path} as ${what}: ${(err as Error).message}`);
  }
  if (!isSocket) {
    throw new NbdsnapError(
      'BAD_ARGUMENT',
      `cannot use ${path} as ${what}: it exists and is not a socket (left as it is)`,
    );
  }
  const state = await probe(path);
  if (state === 'live') throw new NbdsnapError('BUSY', `another server is listening on ${path}`);
  if (state !== 'stale') throw new NbdsnapError('BAD_ARGUMENT', `cannot use ${path} as ${what}: ${state}`);
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new NbdsnapError('BAD_ARGUMENT', `cannot remove the stale socket ${path}: ${(err as Error).message}`);
    }
  }
}

/** 'live', 'stale', or why the socket could not be tried. */
function probe(path: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = createConnection({ path });
    socket.once('connect', () => {
      socket.destroy();
      resolve('live');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      socket.destroy();
      // EAGAIN: a listener whose backlog is full is alive.
      if (err.code === 'EAGAIN') resolve('live');
      else if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') resolve('stale');
      else resolve(err.message);
    });
  });
}
