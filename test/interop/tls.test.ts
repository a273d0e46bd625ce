/**
 * NBD over TLS with real clients against a real `nbdsnap serve --tls=...`: nbdinfo, nbdcopy,
 * qemu-img (tls-creds-x509 and tls-creds-psk), nbdsnap's own client and `nbdsnap backup` /
 * `restore` over nbds://. Credentials are made at test time (certtool, psktool) in a temp folder.
 *
 * The failures must be clean on both sides: the client exits with an error (no hang), the
 * server logs why and goes on serving the next client; under --tls=require nothing but
 * ERR_TLS_REQD crosses the wire in plaintext (no export name, no description).
 */
import { copyFileSync, mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { Option, Reply } from '../../src/nbd-protocol/index.ts';
import { hasTool, MiB, nbdsh, ok, pattern, type RunResult, run, sha256, stopQuietly } from '../helpers/clients.ts';
import { RawClient } from '../helpers/raw-client.ts';
import { CLI, type RunningServer, startServer, tempDir } from '../helpers/server.ts';
import { makeTlsFixture, type TlsFixture } from '../helpers/tls.ts';

const SIZE = 8 * MiB;
const CONTENT = pattern(SIZE, 7);
const DESCRIPTION = 'payroll-volume-description';

const haveTools = ['certtool', 'psktool', 'nbdinfo', 'nbdcopy'].every(hasTool);

/** A client run that must fail, and fail by itself: an error exit, not a kill after a hang. */
function refused(r: RunResult, what: string): string {
  if (r.signal !== null) throw new Error(`${what} hung (killed by ${r.signal})\n${r.stderr}`);
  if (r.code === 0) throw new Error(`${what} succeeded, it must be refused\n${r.stdout}`);
  return r.stderr;
}

/** The server is alive and serves a good client after a refused one. */
async function stillServes(srv: RunningServer, uri: string): Promise<void> {
  expect(srv.child.exitCode).toBeNull();
  const out = ok(await run('nbdinfo', ['--size', uri], { timeoutMs: 30_000 }), 'nbdinfo after a refusal');
  expect(out.trim()).toBe(String(SIZE));
}

const nbdsnapCli = (args: string[]) => run(process.execPath, [CLI, ...args], { timeoutMs: 60_000 });

describe.skipIf(!haveTools)('NBD over TLS', () => {
  const dir = tempDir('nbdsnap-tls-');
  let fx: TlsFixture;
  const image = join(dir.path, 'disk.img');

  beforeAll(() => {
    fx = makeTlsFixture(join(dir.path, 'creds'));
    writeFileSync(image, CONTENT);
  });
  afterAll(() => dir.cleanup());

  describe('--tls=require with certificates', () => {
    let srv: RunningServer;
    const sock = join(dir.path, 'nbd.sock');
    const uri = (name = 'disk', creds = fx.clientDir) =>
      `nbds://127.0.0.1:${srv.port}/${name}?tls-certificates=${creds}`;

    beforeAll(async () => {
      srv = await startServer([
        `disk=${image}`,
        'scratch=memory:8M',
        '-D',
        DESCRIPTION,
        '-k',
        sock,
        '--tls=require',
        `--tls-certificates=${fx.serverDir}`,
      ]);
    });
    afterAll(() => stopQuietly(srv));

    it('prints nbds:// URIs', () => {
      expect(srv.stderr()).toContain(`"nbds://127.0.0.1:${srv.port}/"`);
    });

    it('nbdinfo reads the export over TLS, by IP and by host name', async () => {
      const out = ok(await run('nbdinfo', [uri()]), 'nbdinfo');
      expect(out).toMatch(/newstyle-fixed with TLS/);
      expect(out).toContain(`export-size: ${SIZE}`);
      const byName = `nbds://localhost:${srv.port}/disk?tls-certificates=${fx.clientDir}`;
      expect(ok(await run('nbdinfo', ['--size', byName]), 'nbdinfo localhost').trim()).toBe(String(SIZE));
      // Over TLS the list, names and descriptions are served.
      const list = ok(await run('nbdinfo', ['--list', uri('')]), 'nbdinfo --list over TLS');
      expect(list).toContain('export="disk"');
      expect(list).toContain('export="scratch"');
      expect(list).toContain(DESCRIPTION);
    });

    it('nbdcopy copies out and in over TLS, byte for byte', async () => {
      const out = join(dir.path, 'copy-out.img');
      ok(await run('nbdcopy', ['--connections=2', uri(), out]), 'nbdcopy out');
      expect(sha256(out)).toBe(sha256(CONTENT));
      ok(await run('nbdcopy', ['--connections=2', out, uri('scratch')]), 'nbdcopy in');
      const back = join(dir.path, 'copy-back.img');
      ok(await run('nbdcopy', [uri('scratch'), back]), 'nbdcopy back');
      expect(sha256(back)).toBe(sha256(CONTENT));
    });

    it("nbds+unix:// works on the -k socket, for nbdinfo and nbdsnap's own client", async () => {
      const u = `nbds+unix:///disk?socket=${sock}&tls-certificates=${fx.clientDir}`;
      expect(ok(await run('nbdinfo', ['--size', u]), 'nbdinfo unix').trim()).toBe(String(SIZE));
      const c = await NbdClient.open(u);
      try {
        expect((await c.read(MiB, 65536)).equals(CONTENT.subarray(MiB, MiB + 65536))).toBe(true);
      } finally {
        await c.close();
      }
    });

    it.skipIf(!hasTool('qemu-img'))('qemu-img info and convert with tls-creds-x509', async () => {
      const obj = `tls-creds-x509,id=tls0,dir=${fx.clientDir},endpoint=client`;
      const opts = (name: string) => `driver=nbd,host=127.0.0.1,port=${srv.port},export=${name},tls-creds=tls0`;
      const info = ok(await run('qemu-img', ['info', '--object', obj, '--image-opts', opts('disk')]), 'qemu-img info');
      expect(info).toContain(`virtual size: 8 MiB (${SIZE} bytes)`);
      const out = join(dir.path, 'qemu-out.img');
      ok(
        await run('qemu-img', ['convert', '--object', obj, '--image-opts', opts('disk'), '-O', 'raw', out]),
        'convert',
      );
      expect(sha256(out)).toBe(sha256(CONTENT));
      const src = join(dir.path, 'qemu-src.img');
      writeFileSync(src, pattern(SIZE, 8));
      ok(
        await run('qemu-img', [
          'convert',
          '-n',
          '--object',
          obj,
          '-f',
          'raw',
          src,
          '--target-image-opts',
          opts('scratch'),
        ]),
        'convert into the export',
      );
      const back = join(dir.path, 'qemu-back.img');
      ok(await run('nbdcopy', [uri('scratch'), back]), 'nbdcopy back');
      expect(sha256(back)).toBe(sha256(src));
    });

    it('refuses a plaintext client, and --list, leaking no name or description', async () => {
      const plain = `nbd://127.0.0.1:${srv.port}/disk`;
      expect(refused(await run('nbdinfo', [plain], { timeoutMs: 30_000 }), 'plaintext nbdinfo')).toMatch(/nbd_opt_go/);
      const list = await run('nbdinfo', ['--list', `nbd://127.0.0.1:${srv.port}/`], { timeoutMs: 30_000 });
      expect(refused(list, 'plaintext --list')).toMatch(/nbd_opt_list/);
      expect(list.stdout + list.stderr).not.toContain(DESCRIPTION);
      // Byte level: every option is ERR_TLS_REQD, and no name or description is in any reply.
      const raw = await RawClient.connect({ port: srv.port });
      let seen = Buffer.alloc(0);
      raw.socket.on('data', (d: Buffer) => {
        seen = Buffer.concat([seen, d]);
      });
      await raw.greet();
      expect((await raw.option(Option.LIST)).type).toBe(Reply.ERR_TLS_REQD);
      expect((await raw.go('disk')).type).toBe(Reply.ERR_TLS_REQD);
      expect((await raw.option(Option.STRUCTURED_REPLY)).type).toBe(Reply.ERR_TLS_REQD);
      // EXPORT_NAME cannot be answered with an error: the server hangs up.
      await raw.send(Buffer.concat([Buffer.from('IHAVEOPT'), u32(Option.EXPORT_NAME), u32(4), Buffer.from('disk')]));
      await raw.closed;
      expect(seen.toString('latin1')).not.toMatch(/disk|scratch|payroll/);
      await expect(NbdClient.open(plain)).rejects.toThrow(/TLS is required/);
      await stillServes(srv, uri());
    });

    it('refuses a client that trusts another CA, cleanly on both sides', async () => {
      const r = await run('nbdinfo', [uri('disk', fx.otherCaDir)], { timeoutMs: 30_000 });
      expect(refused(r, 'nbdinfo with another CA')).toMatch(/certificate|verify|gnutls/i);
      await expect(NbdClient.open(uri('disk', fx.otherCaDir))).rejects.toThrow(/TLS handshake failed: .*certificate/);
      await stillServes(srv, uri());
      expect(srv.stderr()).toContain('TLS handshake failed');
    });

    it("nbdsnap's client checks the host name: a name not in the certificate is refused", async () => {
      // The IPv4-mapped IPv6 address reaches the same listener, but it is not an identity the
      // certificate names (IP 127.0.0.1 and DNS localhost).
      const u = `nbds://[::ffff:127.0.0.1]:${srv.port}/disk?tls-certificates=${fx.clientDir}`;
      await expect(NbdClient.open(u)).rejects.toThrow(/TLS handshake failed|cannot connect/);
    });
  });

  describe('--tls-verify-peer', () => {
    let srv: RunningServer;
    const uri = (creds: string) => `nbds://127.0.0.1:${srv.port}/disk?tls-certificates=${creds}`;
    beforeAll(async () => {
      srv = await startServer([
        `disk=${image}`,
        '-r',
        '--tls=require',
        `--tls-certificates=${fx.serverDir}`,
        '--tls-verify-peer',
      ]);
    });
    afterAll(() => stopQuietly(srv));

    it('accepts a client certificate signed by the CA (nbdinfo, qemu-img, nbdsnap)', async () => {
      expect(ok(await run('nbdinfo', ['--size', uri(fx.clientDir)]), 'nbdinfo').trim()).toBe(String(SIZE));
      const c = await NbdClient.open(uri(fx.clientDir));
      await c.close();
      if (hasTool('qemu-img')) {
        const obj = `tls-creds-x509,id=tls0,dir=${fx.clientDir},endpoint=client`;
        const img = `driver=nbd,host=127.0.0.1,port=${srv.port},export=disk,tls-creds=tls0`;
        ok(await run('qemu-img', ['info', '--object', obj, '--image-opts', img]), 'qemu-img with a client certificate');
      }
    });

    it('refuses a client without a certificate, cleanly on both sides', async () => {
      const r = await run('nbdinfo', ['--size', uri(fx.noCertDir)], { timeoutMs: 30_000 });
      expect(refused(r, 'nbdinfo without a certificate')).toMatch(/gnutls|TLS|alert/i);
      await expect(NbdClient.open(uri(fx.noCertDir))).rejects.toThrow(/certificate required|connection/);
      expect(srv.stderr()).toMatch(/"err":"peer did not return a certificate","msg":"TLS handshake failed"/);
      await stillServes(srv, uri(fx.clientDir));
    });

    it('refuses a client certificate from another CA', async () => {
      // The client is told to trust our CA (so it accepts the server) but holds another CA's
      // certificate: the server must refuse it.
      const mixed = join(dir.path, 'mixed');
      mkdirSync(mixed, { recursive: true });
      copyFileSync(join(fx.clientDir, 'ca-cert.pem'), join(mixed, 'ca-cert.pem'));
      copyFileSync(join(fx.otherCaDir, 'client-cert.pem'), join(mixed, 'client-cert.pem'));
      copyFileSync(join(fx.otherCaDir, 'client-key.pem'), join(mixed, 'client-key.pem'));
      const r = await run('nbdinfo', ['--size', uri(mixed)], { timeoutMs: 30_000 });
      refused(r, 'nbdinfo with a foreign client certificate');
      await expect(NbdClient.open(uri(mixed))).rejects.toThrow();
      expect(srv.stderr()).toMatch(/client certificate refused|certificate/);
      await stillServes(srv, uri(fx.clientDir));
    });
  });

  describe('--tls-psk', () => {
    let srv: RunningServer;
    const uri = (file: string, user = 'alice') => `nbds://${user}@127.0.0.1:${srv.port}/disk?tls-psk-file=${file}`;
    beforeAll(async () => {
      srv = await startServer([`disk=${image}`, 'scratch=memory:8M', '--tls=require', `--tls-psk=${fx.pskFile}`]);
    });
    afterAll(() => stopQuietly(srv));

    it('nbdinfo and nbdcopy with the right key', async () => {
      expect(ok(await run('nbdinfo', [uri(fx.pskFile)]), 'nbdinfo psk')).toMatch(/with TLS/);
      const out = join(dir.path, 'psk-out.img');
      ok(await run('nbdcopy', [uri(fx.pskFile), out]), 'nbdcopy psk');
      expect(sha256(out)).toBe(sha256(CONTENT));
    });

    it.skipIf(!hasTool('qemu-img'))('qemu-img with tls-creds-psk', async () => {
      const pskDir = join(dir.path, 'qemu-psk');
      mkdirSync(pskDir, { recursive: true });
      copyFileSync(fx.pskFile, join(pskDir, 'keys.psk'));
      const obj = `tls-creds-psk,id=tls0,dir=${pskDir},username=alice,endpoint=client`;
      const img = `driver=nbd,host=127.0.0.1,port=${srv.port},export=disk,tls-creds=tls0`;
      const out = join(dir.path, 'qemu-psk-out.img');
      ok(await run('qemu-img', ['convert', '--object', obj, '--image-opts', img, '-O', 'raw', out]), 'qemu-img psk');
      expect(sha256(out)).toBe(sha256(CONTENT));
    });

    it("nbdsnap's client with the key, by the user part and by tls-username", async () => {
      for (const u of [
        uri(fx.pskFile),
        `nbds://127.0.0.1:${srv.port}/disk?tls-psk-file=${fx.pskFile}&tls-username=alice`,
      ]) {
        const c = await NbdClient.open(u);
        expect((await c.read(0, 4096)).equals(CONTENT.subarray(0, 4096))).toBe(true);
        await c.close();
      }
    });

    it('refuses a wrong key and an unknown identity, cleanly on both sides', async () => {
      const r = await run('nbdinfo', ['--size', uri(fx.wrongPskFile)], { timeoutMs: 30_000 });
      refused(r, 'nbdinfo with a wrong key');
      await expect(NbdClient.open(uri(fx.wrongPskFile))).rejects.toThrow(/TLS handshake failed/);
      const unknown = join(dir.path, 'bob.psk');
      ok(await run('psktool', ['-u', 'bob', '-p', unknown]), 'psktool');
      refused(await run('nbdinfo', ['--size', uri(unknown, 'bob')], { timeoutMs: 30_000 }), 'nbdinfo as bob');
      expect(srv.stderr()).toContain('TLS handshake failed');
      await stillServes(srv, uri(fx.pskFile));
    });
  });

  describe('stopping', () => {
    it('a graceful stop ends TLS clients: one after GO, one in the middle of its TLS handshake', async () => {
      const srv = await startServer([`disk=${image}`, '-r', '--tls=require', `--tls-certificates=${fx.serverDir}`]);
      const c = await NbdClient.open(`nbds://127.0.0.1:${srv.port}/disk?tls-certificates=${fx.clientDir}`);
      expect((await c.read(0, 4096)).equals(CONTENT.subarray(0, 4096))).toBe(true);
      const raw = await RawClient.connect({ port: srv.port });
      await raw.greet();
      expect((await raw.option(Option.STARTTLS)).type).toBe(Reply.ACK); // and no ClientHello follows
      expect(await srv.stop()).toBe(0);
      await raw.closed;
      await expect(c.read(0, 4096)).rejects.toThrow();
      expect(srv.stderr()).toContain('"msg":"stopped"');
    });
  });

  describe('socket activation', () => {
    it.skipIf(!hasTool('nbdsh'))('serves TLS on a socket passed by LISTEN_FDS (libnbd starts the server)', async () => {
      const argv = [
        process.execPath,
        CLI,
        'serve',
        `disk=${image}`,
        '-r',
        '--tls=require',
        `--tls-certificates=${fx.serverDir}`,
      ];
      const out = await nbdsh(
        `h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_certificates(${JSON.stringify(fx.clientDir)})
h.set_export_name('disk')
h.connect_systemd_socket_activation(${JSON.stringify(argv)})
out['tls'] = h.get_tls_negotiated()
out['size'] = h.get_size()
out['head'] = h.pread(16, 0).hex()
h.shutdown()`,
      );
      expect(out).toEqual({ tls: true, size: SIZE, head: CONTENT.subarray(0, 16).toString('hex') });
    });
  });

  describe('--tls=off', () => {
    it('refuses STARTTLS (ERR_POLICY): an nbds:// client stops, it never falls back to plaintext', async () => {
      const srv = await startServer([`disk=${image}`, '-r']);
      try {
        const u = `nbds://127.0.0.1:${srv.port}/disk?tls-certificates=${fx.clientDir}`;
        expect(refused(await run('nbdinfo', [u], { timeoutMs: 30_000 }), 'nbdinfo nbds:// to plaintext')).toMatch(
          /nbd_connect_uri|starttls|TLS/i,
        );
        await expect(NbdClient.open(u)).rejects.toThrow(/refused TLS \(STARTTLS\): TLS is not enabled/);
      } finally {
        await stopQuietly(srv);
      }
    });
  });

  describe('--tls=on', () => {
    it('serves plaintext and TLS clients side by side', async () => {
      const srv = await startServer([`disk=${image}`, '-r', '--tls=on', `--tls-certificates=${fx.serverDir}`]);
      try {
        expect(ok(await run('nbdinfo', [`nbd://127.0.0.1:${srv.port}/disk`]), 'plaintext')).toMatch(/without TLS/);
        const tlsUri = `nbds://127.0.0.1:${srv.port}/disk?tls-certificates=${fx.clientDir}`;
        expect(ok(await run('nbdinfo', [tlsUri]), 'TLS')).toMatch(/with TLS/);
      } finally {
        await stopQuietly(srv);
      }
    });
  });

  describe('nbdsnap backup and restore over nbds://', () => {
    it('backs up a snapshot and restores it into an export, both over TLS', async () => {
      const work = join(dir.path, 'backup');
      mkdirSync(work, { recursive: true });
      const origin = join(work, 'origin.img');
      writeFileSync(origin, CONTENT);
      writeFileSync(join(work, 'store.img'), '');
      truncateSync(join(work, 'store.img'), 64 * MiB);
      const ctl = join(work, 'ctl.sock');
      const srv = await startServer([
        `disk=${origin}`,
        'target=memory:8M',
        '--store',
        join(work, 'store.img'),
        '--control',
        ctl,
        '--tls=require',
        `--tls-certificates=${fx.serverDir}`,
      ]);
      try {
        ok(await nbdsnapCli(['snapshot', 'create', 'disk', 's1', '--control', ctl]), 'snapshot create');
        // The origin changes after the snapshot: the backup must hold the snapshot's bytes.
        const later = `nbds://127.0.0.1:${srv.port}/disk?tls-certificates=${fx.clientDir}`;
        const c = await NbdClient.open(later);
        await c.write(0, Buffer.alloc(65536, 0xee));
        await c.flush();
        await c.close();
        const file = join(work, 's1.nbdsnap');
        const src = `nbds://127.0.0.1:${srv.port}/disk@s1?tls-certificates=${fx.clientDir}`;
        ok(await nbdsnapCli(['backup', src, file]), 'backup over nbds://');
        const target = `nbds://127.0.0.1:${srv.port}/target?tls-certificates=${fx.clientDir}`;
        ok(await nbdsnapCli(['restore', file, target, '--journal', join(work, 'undo')]), 'restore over nbds://');
        const back = join(work, 'restored.img');
        ok(await run('nbdcopy', [target, back]), 'nbdcopy the restored export');
        expect(sha256(back)).toBe(sha256(CONTENT));
        // And without credentials the backup is refused, in one line.
        const bare = await nbdsnapCli(['backup', `nbd://127.0.0.1:${srv.port}/disk@s1`, join(work, 'x.nbdsnap')]);
        expect(bare.code).toBe(1);
        expect(bare.stderr).toMatch(/TLS is required/);
      } finally {
        await stopQuietly(srv);
      }
    });
  });

  describe('configuration faults', () => {
    const refusedStart = async (args: string[], want: RegExp, status: number) => {
      const r = await nbdsnapCli(['serve', 'm=memory:1M', '-p', '1', ...args]);
      expect(r.stderr).toMatch(want);
      expect(r.code, r.stderr).toBe(status);
    };
    it('refuses TLS without credentials (usage, 2), a missing directory or a bad PSK file (1)', async () => {
      await refusedStart(['--tls=require'], /needs --tls-certificates=DIR or --tls-psk=FILE/, 2);
      await refusedStart([`--tls-certificates=${fx.serverDir}`], /need --tls=on or require/, 2);
      await refusedStart(['--tls=on', '--tls-verify-peer', `--tls-psk=${fx.pskFile}`], /a PSK already/, 2);
      await refusedStart(
        ['--tls=on', `--tls-certificates=${join(dir.path, 'nope')}`],
        /cannot read the server cert/,
        1,
      );
      await refusedStart(
        ['--tls=on', `--tls-psk=${join(fx.serverDir, 'server-cert.pem')}`],
        /not an identity:hexkey/,
        1,
      );
    });

    it('warns in one line when a non-loopback address is served without TLS', async () => {
      // 192.0.2.1 (TEST-NET-1) is not on this machine: listening fails after the warning.
      const r = await nbdsnapCli(['serve', 'm=memory:1M', '-b', '192.0.2.1', '-p', '10809']);
      const lines = r.stderr.split('\n').filter((l) => l.includes('no authentication'));
      expect(lines).toHaveLength(1);
      const quiet = await nbdsnapCli([
        'serve',
        'm=memory:1M',
        '-b',
        '192.0.2.1',
        '-p',
        '10809',
        '--tls=on',
        `--tls-psk=${fx.pskFile}`,
      ]);
      expect(quiet.stderr).not.toContain('no authentication');
    });
  });
});

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
