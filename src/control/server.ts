/**
 * The control socket server: `serve --control PATH`. One JSON request per line, one response
 * per request (commands.ts); `events` streams events until the client disconnects or the server
 * stops. Every failure becomes an error response with the NbdsnapError code. `close()` ends
 * every connection: streams end with a response, idle clients are disconnected, and whatever is
 * left after a few seconds is cut off, so a stop never waits on a client.
 */
import { chmodSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { NbdsnapError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { takeSocketPath } from '../server/unix-socket.ts';
import type { SnapshotManager } from '../snapshot/manager.ts';
import { type Command, commandTable } from './commands.ts';
import { ControlConnection } from './connection.ts';

/** How long a graceful stop waits for control clients to take their last answers. */
const CLOSE_GRACE_MS = 3000;

export class ControlServer {
  private readonly server: Server;
  private readonly commands: Map<string, Command>;
  private readonly log: Logger;
  private readonly connections = new Set<ControlConnection>();
  private closing: Promise<void> | undefined;

  constructor(manager: SnapshotManager, log: Logger) {
    this.log = log;
    this.commands = commandTable(manager);
    this.server = createServer((socket) => {
      if (this.closing !== undefined) {
        socket.destroy();
        return;
      }
      const conn = new ControlConnection(socket, this.commands, this.log);
      this.connections.add(conn);
      void conn.closed.then(() => this.connections.delete(conn));
    });
  }

  async listen(path: string): Promise<void> {
    await takeSocketPath(path, 'the control socket');
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new NbdsnapError('BAD_ARGUMENT', `cannot create control socket ${path}: ${err.message}`)),
      );
      this.server.listen({ path }, resolve);
    });
    chmodSync(path, 0o600);
  }

  /** Stop accepting, end every connection gracefully, and cut off what is left after a grace period. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const unlistened = new Promise<void>((resolve) => this.server.close(() => resolve()));
      const all = Promise.all([...this.connections].map((c) => c.closed));
      for (const c of this.connections) c.stop();
      const timer = setTimeout(() => {
        for (const c of this.connections) c.destroy();
      }, CLOSE_GRACE_MS);
      await all;
      clearTimeout(timer);
      await unlistened;
    })();
    return this.closing;
  }
}
