/**
 * Careless and hostile clients against a real `nbdsnap serve` (scripts/abuse-clients.mjs makes
 * them, scaled down from the issue's): clients that send a 32 MiB WRITE header and 31 MiB of its
 * payload then stall, clients that send four 32 MiB READs and never read, sockets that never
 * finish the handshake. Meanwhile a good client (nbdsh) writes and reads back exactly its bytes,
 * and the server's peak RSS stays under a generous bound (the memory budget holds; a memory
 * property, not a timing). Then: the handshake timeout closes idle handshakes, --max-connections
 * refuses the extra connections with one log line, and the control socket stops reading from a
 * client that does not read its answers (and answers every request once it does).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { hasTool, MiB, nbdsh, sparseImage, stopQuietly } from '../helpers/clients.ts';
import { ROOT, type RunningServer, startServer, tempDir } from '../helpers/server.ts';

const SCRIPT = join(ROOT, 'scripts/abuse-clients.mjs');

interface Status {
  ready?: boolean;
  written: number;
  closed: { write: number; read: number; handshake: number };
}

/** The hostile clients as a child process; `status` is its latest status line. */
class Hostile {
  status: Status | undefined;
  private readonly child: ChildProcess;
  private readonly readyP: Promise<void>;

  constructor(port: number, args: string[]) {
    this.child = spawn(process.execPath, [SCRIPT, '--port', String(port), '--export', 'disk', ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let buf = '';
    this.readyP = new Promise((resolve, reject) => {
      this.child.once('exit', (code) => reject(new Error(`abuse-clients exited (${code})`)));
      this.child.stdout?.on('data', (chunk: Buffer) => {
        buf += chunk.toString();
        const lines = buf.split('\n');
        buf = lines.pop() ?? '';
        for (const l of lines) {
          this.status = JSON.parse(l) as Status;
          if (this.status.ready === true) resolve();
        }
      });
    });
  }

  ready(): Promise<void> {
    return this.readyP;
  }

  /** Wait (status lines come every second) until `pred` holds; fails after `limitMs`. */
  async until(pred: (s: Status) => boolean, limitMs = 60_000): Promise<Status> {
    const end = Date.now() + limitMs;
    while (Date.now() < end) {
      if (this.status !== undefined && pred(this.status)) return this.status;
      await sleep(200);
    }
    throw new Error(`condition not reached; last status ${JSON.stringify(this.status)}`);
  }

  stop(): void {
    this.child.kill('SIGTERM');
  }
}

function peakRssMiB(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+) kB/);
  return Number(m?.[1] ?? 0) / 1024;
}

const haveNbdsh = hasTool('nbdsh');
const dir = tempDir('nbdsnap-abuse-');
let images = 0;
const servers: RunningServer[] = [];
const hostiles: Hostile[] = [];
afterAll(async () => {
  for (const h of hostiles) h.stop();
  for (const s of servers) await stopQuietly(s);
  dir.cleanup();
});

let image = '';
/** A server of a fresh 64 MiB image (`image`). */
async function serve(extra: string[]): Promise<RunningServer> {
  image = sparseImage(join(dir.path, `disk${++images}.img`), 64 * MiB);
  const srv = await startServer([`disk=${image}`, '--log-level', 'info', ...extra]);
  servers.push(srv);
  return srv;
}

function hostile(port: number, args: string[]): Hostile {
  const h = new Hostile(port, args);
  hostiles.push(h);
  return h;
}

describe.skipIf(!haveNbdsh)('hostile clients', () => {
  it('cannot stop a good client, and the memory stays bounded', async () => {
    const srv = await serve([]);
    const h = hostile(srv.port, ['--write-stall', '8', '--read-unread', '4', '--handshake', '200']);
    await h.ready();
    // The good client: 2 MiB writes at 16 MiB, each read back; a READ crossing them.
    const out = await nbdsh(
      `
import os
sizes = [4096, 65536, 2 * 1024 * 1024, 2 * 1024 * 1024]
off = 16 * 1024 * 1024
ok = True
written = []
for i, n in enumerate(sizes):
    data = os.urandom(n)
    h.pwrite(data, off)
    h.flush()
    ok = ok and h.pread(n, off) == data
    written.append((off, data))
    off += n
whole = h.pread(off - 16 * 1024 * 1024, 16 * 1024 * 1024)
ok = ok and whole == b''.join(d for _, d in written)
out['ok'] = ok
`,
      srv.uri('disk'),
    );
    expect(out.ok).toBe(true);
    // The hostile clients are still connected (held back, not dropped), and the bytes are on disk.
    expect(h.status?.closed).toEqual({ write: 0, read: 0, handshake: 0 });
    const head = readFileSync(image).subarray(16 * MiB, 16 * MiB + 4096);
    expect(head.equals(Buffer.alloc(4096))).toBe(false);
    const peak = peakRssMiB(srv.pid);
    console.log(`abuse: nbdsnap peak RSS ${peak.toFixed(0)} MiB with the hostile clients connected`);
    expect(peak).toBeLessThan(400);
    h.stop();
  }, 180_000);

  it('closes handshakes that do not finish in time', async () => {
    const srv = await serve(['--handshake-timeout', '1']);
    const h = hostile(srv.port, ['--handshake', '40']);
    await h.ready();
    await h.until((s) => s.closed.handshake === 40);
    const lines = srv
      .stderr()
      .split('\n')
      .filter((l) => l.includes('handshake timeout'));
    expect(lines.length).toBe(40);
    h.stop();
  }, 120_000);

  it('refuses connections beyond --max-connections, logged once per burst', async () => {
    const srv = await serve(['--max-connections', '5', '--handshake-timeout', '0']);
    const held = hostile(srv.port, ['--handshake', '5']);
    await held.ready();
    const extra = hostile(srv.port, ['--handshake', '3']);
    await extra.until((s) => s.closed.handshake === 3);
    expect(held.status?.closed.handshake).toBe(0);
    const refusals = () =>
      srv
        .stderr()
        .split('\n')
        .filter((l) => l.includes('connection limit reached'));
    expect(refusals().length).toBe(1);
    held.stop();
    extra.stop();
    // Once the held ones are gone (each logs its one line as it closes), a client is served
    // again, and the burst is summed up.
    const gone = () =>
      srv
        .stderr()
        .split('\n')
        .filter((l) => l.includes('in the handshake')).length;
    for (let i = 0; i < 300 && gone() < 5; i++) await sleep(100);
    expect(gone()).toBe(5);
    const out = await nbdsh("out['size'] = h.get_size()", srv.uri('disk'));
    expect(out.size).toBe(64 * MiB);
    expect(srv.stderr()).toMatch(/"refused":3[,}].*accepting connections again/);
  }, 120_000);
});

describe('control socket back-pressure', () => {
  it('stops reading from a client that does not read its answers, then answers every request', async () => {
    const control = join(dir.path, 'ctl.sock');
    const srv = await serve(['--control', control, '--transient']);
    const sock: Socket = connect({ path: control });
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    sock.pause(); // read nothing for now
    const n = 60_000;
    const pad = 'x'.repeat(40);
    const burst = Array.from({ length: n }, (_, i) => `{"id": ${i + 1}, "cmd": "snapshot.list", "pad": "${pad}"}\n`);
    const text = burst.join('');
    sock.write(text);
    // The server stops reading: once nothing moves any more, most of the burst is still unsent on
    // our side (without back-pressure the server reads it all and buffers the answers).
    let before = -1;
    for (let i = 0; i < 60 && sock.writableLength !== before; i++) {
      before = sock.writableLength;
      await sleep(1000);
    }
    expect(sock.writableLength).toBe(before);
    expect(before).toBeGreaterThan(text.length / 2);
    expect(peakRssMiB(srv.pid)).toBeLessThan(400);
    // Reading the answers lets the rest in: one answer per request.
    let got = 0;
    let rest = '';
    sock.on('data', (chunk: Buffer) => {
      const lines = (rest + chunk.toString()).split('\n');
      rest = lines.pop() ?? '';
      got += lines.length;
    });
    sock.resume();
    const end = Date.now() + 120_000;
    while (got < n && Date.now() < end) await sleep(200);
    expect(got).toBe(n);
    sock.destroy();
  }, 180_000);
});
