/**
 * The server's log on stderr: every line is one JSON object (pino), each connection is logged
 * once at info level (export, client address, TLS or not), a connection that never attaches is
 * logged once too, and `--log-format=text` gives the same records as readable lines.
 */
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { stopQuietly } from '../helpers/clients.ts';
import { type RunningServer, startServer } from '../helpers/server.ts';

type Line = Record<string, unknown> & { level: string; msg: string; time: string };

/** Every stderr line as JSON; a line that does not parse fails the test. */
const jsonLines = (stderr: string): Line[] =>
  stderr
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Line);

/** Connect, read the greeting, and hang up without choosing an export. */
async function hangUpInHandshake(port: number): Promise<void> {
  const s = connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => {
    s.once('data', () => resolve());
    s.once('error', reject);
  });
  s.destroy();
}

/** Wait until `count` lines say `msg` (the server logs a closed connection asynchronously). */
async function waitForLines(srv: RunningServer, text: string, count: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (srv.stderr().split(text).length - 1 < count) {
    if (Date.now() > deadline) throw new Error(`fewer than ${count} lines with ${text}:\n${srv.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('server log', () => {
  let srv: RunningServer | undefined;
  afterEach(async () => {
    await stopQuietly(srv);
    srv = undefined;
  });

  it('is JSON, one info line per connection with its export, client and TLS', async () => {
    srv = await startServer(['disk=memory:4M', 'other=memory:1M']);
    for (const name of ['disk', 'other', 'disk']) {
      const c = await NbdClient.open(srv.uri(name));
      await c.read(0, 4096);
      await c.close();
    }
    await hangUpInHandshake(srv.port);
    await waitForLines(srv, '"msg":"connected"', 4);
    expect(await srv.stop()).toBe(0);
    const lines = jsonLines(srv.stderr());
    for (const l of lines) {
      expect(['error', 'warn', 'info', 'debug']).toContain(l.level);
      expect(Number.isNaN(Date.parse(l.time))).toBe(false);
    }
    const perConnection = lines.filter((l) => l.level === 'info' && l.conn !== undefined);
    expect(perConnection.map((l) => l.conn)).toEqual([1, 2, 3, 4]);
    expect(perConnection.every((l) => l.msg === 'connected' && l.tls === false)).toBe(true);
    expect(perConnection.map((l) => l.export)).toEqual(['disk', 'other', 'disk', null]);
    for (const l of perConnection) expect(l.peer).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(perConnection[3]?.ended).toBe('in the handshake');
    expect(lines.map((l) => l.msg)).toEqual(expect.arrayContaining(['listening', 'stopped']));
  });

  it('adds the request detail and the connection ends at debug level only', async () => {
    srv = await startServer(['disk=memory:4M', '--log-level', 'debug']);
    const c = await NbdClient.open(srv.uri('disk'));
    await c.read(0, 512);
    await c.close();
    await waitForLines(srv, '"msg":"disconnected"', 1);
    const lines = jsonLines(srv.stderr()).filter((l) => l.conn === 1);
    expect(lines.filter((l) => l.level === 'info').map((l) => l.msg)).toEqual(['connected']);
    expect(lines.filter((l) => l.level === 'debug').map((l) => l.msg)).toEqual(
      expect.arrayContaining(['accepted', 'request', 'disconnected']),
    );
  });

  it('--log-format=text writes the same records as readable lines', async () => {
    srv = await startServer(['disk=memory:4M', '--log-format=text']);
    const c = await NbdClient.open(srv.uri('disk'));
    await c.close();
    await waitForLines(srv, ' connected ', 1);
    expect(await srv.stop()).toBe(0);
    const lines = srv
      .stderr()
      .split('\n')
      .filter((l) => l !== '');
    for (const l of lines) expect(l).toMatch(/^\d\d:\d\d:\d\d\.\d{3} (ERROR|WARN |INFO |DEBUG) \S/);
    expect(lines.some((l) => l.startsWith('{'))).toBe(false);
    const connected = lines.filter((l) => / INFO {2}connected /.test(l));
    expect(connected).toHaveLength(1);
    expect(connected[0]).toMatch(
      / INFO {2}connected conn=1 peer=127\.0\.0\.1:\d+ export=disk tls=false structured=true/,
    );
    expect(lines.some((l) => / INFO {2}stopped$/.test(l))).toBe(true);
  });
});
