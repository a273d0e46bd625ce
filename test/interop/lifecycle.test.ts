/**
 * How the server is started and stopped: systemd socket activation (libnbd runs the server
 * with LISTEN_FDS), a Unix socket (-k), and SIGTERM while a client is connected (exit 0, and
 * an acknowledged write is in the image file).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { Command } from '../../src/nbd-protocol/index.ts';
import {
  background,
  hasTool,
  MiB,
  nbdsh,
  ok,
  pattern,
  readAt,
  run,
  sameBytes,
  sparseImage,
  waitForFile,
} from '../helpers/clients.ts';
import { RawClient } from '../helpers/raw-client.ts';
import { CLI, startServer, tempDir } from '../helpers/server.ts';

const SIZE = 64 * MiB;

describe('server lifecycle', () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  describe.skipIf(!hasTool('nbdinfo') || !hasTool('nbdsh'))('systemd socket activation', () => {
    it('serves nbdinfo --json -- [ nbdsnap serve NAME=PATH ]', async () => {
      const image = sparseImage(join(dir.path, 'activated.img'), SIZE);
      const r = await run('nbdinfo', ['--json', '--', '[', process.execPath, CLI, 'serve', `disk=${image}`, ']']);
      const info = JSON.parse(ok(r, 'nbdinfo with socket activation'));
      expect(info.protocol).toBe('newstyle-fixed');
      expect(info.exports).toHaveLength(1);
      expect(info.exports[0]).toMatchObject({ 'export-size': SIZE, is_read_only: false, can_multi_conn: true });
      // The server learnt its socket from LISTEN_FDS, and libnbd stopped it with SIGTERM.
      expect(r.stderr).toContain('"on":["fd 3"]');
      expect(r.stderr).toContain('"msg":"stopped"');
    });

    it('takes writes from nbdsh over an activated socket', async () => {
      const image = sparseImage(join(dir.path, 'activated-rw.img'), SIZE);
      const argv = JSON.stringify([process.execPath, CLI, 'serve', `disk=${image}`, '--log-level', 'warn']);
      const out = await nbdsh(`
h.connect_systemd_socket_activation(${argv})
h.pwrite(b'\\x61' * 4096, 4096)
h.flush()
out['read'] = h.pread(4, 4096).hex()
out['size'] = h.get_size()
h.shutdown()
`);
      expect(out).toEqual({ read: '61616161', size: SIZE });
      expect(sameBytes(readAt(image, 4096, 4096), Buffer.alloc(4096, 0x61))).toBe('equal');
    });
  });

  describe('Unix socket (-k)', () => {
    it('serves nbd+unix:///NAME?socket=SOCKET with no TCP listener', async () => {
      const image = sparseImage(join(dir.path, 'unix.img'), SIZE);
      const sock = join(dir.path, 'nbd.sock');
      const pidFile = join(dir.path, 'unix.pid');
      const srv = background(process.execPath, [
        CLI,
        'serve',
        `disk=${image}`,
        'mem=memory:1M',
        '-k',
        sock,
        '--pid-file',
        pidFile,
      ]);
      onTestFinished(() => srv.kill('SIGKILL')); // even on a timeout; a no-op once it exited
      try {
        await waitForFile(pidFile, srv);
        expect(srv.output()).toContain(`nbdsnap: export "disk" at nbd+unix:///disk?socket=${sock}`);
        expect(srv.output()).not.toContain('nbd://');
        const uri = `nbd+unix:///disk?socket=${sock}`;
        const info = JSON.parse(ok(await run('nbdinfo', ['--json', uri]), 'nbdinfo over a Unix socket'));
        expect(info.exports[0]).toMatchObject({ 'export-name': 'disk', 'export-size': SIZE });
        const list = JSON.parse(ok(await run('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${sock}`])));
        expect(list.exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual(['disk', 'mem']);
        const out = await nbdsh(
          `h.pwrite(b'\\x75' * 512, 1 << 20, nbd.CMD_FLAG_FUA)\nout['read'] = h.pread(4, 1 << 20).hex()`,
          uri,
        );
        expect(out.read).toBe('75757575');
        expect(sameBytes(readAt(image, MiB, 512), Buffer.alloc(512, 0x75))).toBe('equal');
        // The raw client too: the same protocol over the Unix socket.
        const c = await RawClient.connect({ path: sock });
        expect(await c.greet()).toBe(3); // FIXED_NEWSTYLE | NO_ZEROES
        c.destroy();
      } finally {
        srv.kill('SIGTERM');
      }
      expect(await srv.exited).toBe(0);
      // Node removes the socket file when the listener closes.
      expect(existsSync(sock)).toBe(false);
    });

    it('replaces a stale socket file left by a dead server', async () => {
      const image = sparseImage(join(dir.path, 'stale.img'), SIZE);
      const sock = join(dir.path, 'stale.sock');
      // A bound, never-listening socket whose process has gone: what a crash leaves behind.
      execFileSync('/usr/bin/python3', [
        '-c',
        `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(sock)})`,
      ]);
      expect(existsSync(sock)).toBe(true);
      const srv = await startServer([`disk=${image}`, '-k', sock]);
      onTestFinished(() => void srv.child.kill('SIGKILL'));
      try {
        const size = ok(await run('nbdinfo', ['--size', `nbd+unix:///disk?socket=${sock}`]), 'nbdinfo');
        expect(size.trim()).toBe(String(SIZE));
      } finally {
        expect(await srv.stop()).toBe(0);
      }
    });
  });

  describe('SIGTERM', () => {
    it('exits 0 with an idle nbdsh connected, and the acknowledged write is in the file', async () => {
      const image = sparseImage(join(dir.path, 'sigterm.img'), SIZE);
      const srv = await startServer([`disk=${image}`]);
      // A real client that writes (no FUA, no flush), reports the ack, then sits idle.
      const script = `
import sys, time
h.pwrite(b'\\x77' * 65536, 2 << 20)
print('acknowledged', flush=True)
time.sleep(600)
`;
      const client = background('nbdsh', ['-u', srv.uri('disk'), '-c', script]);
      // Should stop() hang, the test times out and these still run (finally blocks would not).
      onTestFinished(() => {
        client.kill('SIGKILL');
        srv.child.kill('SIGKILL');
      });
      try {
        while (!client.output().includes('acknowledged')) {
          if (client.child.exitCode !== null) throw new Error(`nbdsh exited: ${client.output()}`);
          await sleep(20);
        }
        expect(await srv.stop('SIGTERM')).toBe(0);
        // The server went on its own while the client was still connected.
        expect(client.child.exitCode).toBeNull();
      } finally {
        client.kill('SIGKILL');
      }
      expect(sameBytes(readAt(image, 2 * MiB, 65536), Buffer.alloc(65536, 0x77))).toBe('equal');
      expect(srv.stderr()).toContain('"msg":"stopped"');
    });

    it('closes the connection of a raw client and keeps its acknowledged write', async () => {
      const image = sparseImage(join(dir.path, 'sigterm-raw.img'), SIZE);
      const srv = await startServer([`disk=${image}`]);
      const c = await RawClient.open(srv.port, 'disk');
      onTestFinished(() => {
        c.destroy();
        srv.child.kill('SIGKILL');
      });
      const data = pattern(MiB, 9);
      const w = await c.request(Command.WRITE, { offset: 5 * MiB, data });
      expect(w.error).toBe(0);
      const pending = c.sendRequest(Command.READ, { offset: 5 * MiB, length: MiB });
      const read = await c.reply(pending);
      expect(sameBytes(read.data ?? Buffer.alloc(0), data)).toBe('equal');
      const code = srv.stop('SIGTERM');
      await c.closed;
      expect(await code).toBe(0);
      expect(sameBytes(readAt(image, 5 * MiB, MiB), data)).toBe('equal');
    });
  });
});
