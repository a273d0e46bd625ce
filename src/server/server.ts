/**
 * The NBD server: listening sockets (TCP, a Unix socket, or descriptors passed by systemd
 * socket activation) feeding Connections that serve the exports of one ExportRegistry.
 * `close()` is the graceful stop: no new connections, every connection drained and flushed.
 *
 * Limits against careless and hostile clients: one memory budget shared by every connection
 * (memory-budget.ts), a handshake timeout, and a maximum number of connections, beyond which new
 * ones are closed at accept (logged once per burst of refusals).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { NbdsnapError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { Connection } from './connection.ts';
import type { ExportRegistry } from './exports.ts';
import { DEFAULT_MAX_BUFFER, MemoryBudget } from './memory-budget.ts';
import type { ServerTls } from './tls.ts';
import { takeSocketPath } from './unix-socket.ts';

export interface ServerLimits {
  /** Bytes of request payloads and unsent replies held for all connections together. */
  maxBuffer: number;
  /** Milliseconds a client has to finish option haggling; 0 for no limit. */
  handshakeTimeoutMs: number;
  /** Connections served at once; more are closed at accept. */
  maxConnections: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxBuffer: DEFAULT_MAX_BUFFER,
  handshakeTimeoutMs: 10_000,
  maxConnections: 4096,
};

export type ListenSpec = { tcp: { host: string; port: number } } | { unix: string } | { fd: number };

/** Descriptors handed over by systemd (LISTEN_PID / LISTEN_FDS), or none. */
export function socketActivationFds(env: NodeJS.ProcessEnv = process.env): number[] {
  if (env.LISTEN_PID === undefined || Number(env.LISTEN_PID) !== process.pid) return [];
  const n = Number(env.LISTEN_FDS ?? '0');
  if (!Number.isInteger(n) || n < 1 || n > 16) return [];
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  return Array.from({ length: n }, (_, i) => 3 + i);
}

export class NbdServer {
  readonly registry: ExportRegistry;
  private readonly log: Logger;
  private readonly listeners: Server[] = [];
  private readonly connections = new Set<Connection>();
  private nextId = 1;
  private stopping: Promise<void> | undefined;
  /** STARTTLS on every listener (TCP, Unix socket, socket activation) when set. */
  private readonly tls: ServerTls | undefined;
  private readonly limits: ServerLimits;
  readonly budget: MemoryBudget;
  /** Connections refused at accept in the current burst (since the last one accepted). */
  private refusedInBurst = 0;
  private refusedTotal = 0;

  constructor(registry: ExportRegistry, log: Logger, tls?: ServerTls, limits: Partial<ServerLimits> = {}) {
    this.registry = registry;
    this.log = log;
    this.tls = tls;
    this.limits = { ...DEFAULT_LIMITS, ...limits };
    this.budget = new MemoryBudget(this.limits.maxBuffer);
  }

  /**
   * Start listening; resolves with a URI-ish description of each listener once all accept
   * (nbds:// and nbds+unix:// when TLS is on).
   */
  async listen(specs: ListenSpec[]): Promise<string[]> {
    const where: string[] = [];
    const scheme = this.tls === undefined ? 'nbd' : 'nbds';
    for (const spec of specs) {
      const server = createServer((socket) => this.accept(socket));
      if ('unix' in spec) await takeSocketPath(spec.unix, 'the NBD socket');
      await new Promise<void>((resolve, reject) => {
        server.once('error', (err: NodeJS.ErrnoException) => reject(listenError(spec, err)));
        if ('tcp' in spec) server.listen({ host: spec.tcp.host, port: spec.tcp.port }, resolve);
        else if ('unix' in spec) server.listen({ path: spec.unix }, resolve);
        else server.listen({ fd: spec.fd }, resolve);
      });
      // Only once listening: a failure to listen is the caller's error (one line from the CLI),
      // not also a log line.
      server.on('error', (err) => this.log.error('listener error', { err: err.message }));
      this.listeners.push(server);
      const addr = server.address();
      if ('tcp' in spec && addr !== null && typeof addr === 'object') {
        const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
        where.push(`${scheme}://${host}:${addr.port}/`);
      } else if ('unix' in spec) {
        where.push(`${scheme}+unix:///?socket=${spec.unix}`);
      } else {
        where.push(`fd ${'fd' in spec ? spec.fd : '?'}`);
      }
    }
    return where;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Connections accepted since the start (the metrics' total). */
  get acceptedCount(): number {
    return this.nextId - 1;
  }

  /** Connections closed at accept because --max-connections was reached. */
  get refusedCount(): number {
    return this.refusedTotal;
  }

  private accept(socket: Socket): void {
    if (this.stopping !== undefined) {
      socket.destroy();
      return;
    }
    if (this.connections.size >= this.limits.maxConnections) {
      // One line per burst of refusals, not one per socket: a flood must not flood the log too.
      if (this.refusedInBurst === 0) {
        this.log.warn('connection limit reached, refusing new connections', {
          maxConnections: this.limits.maxConnections,
        });
      }
      this.refusedInBurst += 1;
      this.refusedTotal += 1;
      socket.destroy();
      return;
    }
    if (this.refusedInBurst > 0) {
      this.log.info('accepting connections again', { refused: this.refusedInBurst });
      this.refusedInBurst = 0;
    }
    if (socket.remoteFamily !== undefined) socket.setNoDelay(true);
    const id = this.nextId++;
    const peer = socket.remoteAddress === undefined ? 'unix' : `${socket.remoteAddress}:${socket.remotePort}`;
    const log = this.log.child({ conn: id, peer });
    log.debug('accepted'); // the one info line per connection comes once its handshake ends (connection.ts)
    const conn = new Connection(
      id,
      socket,
      this.registry,
      log,
      { budget: this.budget, handshakeTimeoutMs: this.limits.handshakeTimeoutMs },
      this.tls,
    );
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
  }

  /**
   * Graceful stop. At once: no new connections; every connection refuses new requests
   * (ESHUTDOWN), finishes those in flight, flushes its export and closes once its last reply is
   * sent. After `graceMs`, connections still open (a client that reads nothing, one stalled in the
   * middle of a request, a reply still queued) are disconnected. Resolves once every connection
   * is closed AND every request it had in flight has settled: the devices behind them may be
   * closed only then (a request still running on a closed descriptor could write into a file
   * opened later under the same number). How long that takes is bounded by the devices (a
   * remote's --remote-timeout); serve's --shutdown-timeout bounds the whole stop.
   */
  close(graceMs = 10_000): Promise<void> {
    this.stopping ??= (async () => {
      // Stop accepting now, but await the listeners last: their close callbacks fire only once
      // every connection is gone, so awaiting them first would leave connected clients
      // undisturbed (never shut down) until they left on their own.
      const unlistened = Promise.all(this.listeners.map((l) => new Promise<void>((r) => l.close(() => r()))));
      const conns = [...this.connections];
      const all = Promise.all(conns.map((c) => c.shutdown()));
      let timer: NodeJS.Timeout | undefined;
      const graceOver = new Promise<boolean>((r) => {
        timer = setTimeout(() => r(true), graceMs);
      });
      if (await Promise.race([all.then(() => false), graceOver])) {
        const open = [...this.connections];
        if (open.length > 0) {
          this.log.warn('disconnecting clients still connected after the shutdown grace', {
            seconds: graceMs / 1000,
            connections: open.length,
            exports: [...new Set(open.map((c) => c.exportName ?? null))],
          });
        }
        for (const c of open) c.destroy();
      }
      clearTimeout(timer);
      await all;
      await unlistened;
    })();
    return this.stopping;
  }
}

function listenError(spec: ListenSpec, err: NodeJS.ErrnoException): NbdsnapError {
  const where = 'tcp' in spec ? `${spec.tcp.host}:${spec.tcp.port}` : 'unix' in spec ? spec.unix : `fd ${spec.fd}`;
  const why =
    err.code === 'EADDRINUSE' ? 'address already in use' : err.code === 'EACCES' ? 'permission denied' : err.message;
  return new NbdsnapError('BAD_ARGUMENT', `cannot listen on ${where}: ${why}`, { cause: err });
}
