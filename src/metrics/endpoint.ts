/**
 * The HTTP side of `--metrics=ADDR:PORT`: GET /metrics answers the exposition (text format
 * 0.0.4), anything else 404. Bound exactly where the user says; nothing is served elsewhere.
 */
import { createServer, type Server } from 'node:http';
import { NbdsnapError } from '../errors.ts';

export interface MetricsAddress {
  host: string;
  port: number;
}

/**
 * `ADDR:PORT`, `[IPV6]:PORT`, or `PORT` alone (loopback, 127.0.0.1). Port 0 takes any free port
 * (the address is logged). Anything else is a BAD_ARGUMENT naming the option.
 */
export function parseMetricsAddress(spec: string): MetricsAddress {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(spec) ?? /^([^:[\]]+):(\d+)$/.exec(spec) ?? /^()(\d+)$/.exec(spec);
  const port = m === null ? Number.NaN : Number(m[2]);
  if (m === null || !Number.isInteger(port) || port > 65535) {
    throw new NbdsnapError('BAD_ARGUMENT', `--metrics "${spec}" is not ADDR:PORT (e.g. 127.0.0.1:9100)`);
  }
  return { host: m[1] === '' ? '127.0.0.1' : (m[1] as string), port };
}

export interface MetricsEndpoint {
  /** `http://ADDR:PORT/metrics`, with the port actually bound. */
  readonly url: string;
  close(): Promise<void>;
}

/** Listen at `at`; `body` makes one exposition (it may throw: the scrape gets a 500). */
export async function serveMetrics(
  at: MetricsAddress,
  contentType: string,
  body: () => Promise<string>,
): Promise<MetricsEndpoint> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    body().then(
      (text) => res.writeHead(200, { 'Content-Type': contentType }).end(req.method === 'HEAD' ? undefined : text),
      (err: unknown) => res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${String(err)}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'EADDRINUSE'
          ? 'address already in use'
          : err.code === 'EACCES'
            ? 'permission denied'
            : err.message;
      reject(
        new NbdsnapError('BAD_ARGUMENT', `cannot listen on ${at.host}:${at.port} (--metrics): ${why}`, { cause: err }),
      );
    });
    server.listen({ host: at.host, port: at.port }, resolve);
  });
  const addr = server.address();
  const port = addr !== null && typeof addr === 'object' ? addr.port : at.port;
  const host = at.host.includes(':') ? `[${at.host}]` : at.host;
  return {
    url: `http://${host}:${port}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
