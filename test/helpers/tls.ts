/**
 * TLS credentials for tests, made at test time with GnuTLS's certtool and psktool in a temp
 * folder (never committed): a CA, a server certificate for 127.0.0.1 and localhost, a client
 * certificate, in the directory layout qemu, nbdkit and libnbd read (`ca-cert.pem`,
 * `server-cert.pem`, `server-key.pem`, `client-cert.pem`, `client-key.pem`), a second CA that
 * signed nothing of ours, and a PSK file.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TlsFixture {
  /** Server side: ca-cert.pem, server-cert.pem, server-key.pem. */
  serverDir: string;
  /** Client side: ca-cert.pem, client-cert.pem, client-key.pem (libnbd and qemu endpoint=client). */
  clientDir: string;
  /** Client side with only ca-cert.pem: no client certificate. */
  noCertDir: string;
  /** A client that trusts another CA (with its own client certificate from that CA). */
  otherCaDir: string;
  /** psktool file with identity `alice`. */
  pskFile: string;
  /** The same identity with another key. */
  wrongPskFile: string;
}

function certtool(args: string[]): void {
  execFileSync('certtool', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function template(path: string, lines: string[]): string {
  writeFileSync(path, `${lines.join('\n')}\n`);
  return path;
}

function makeCa(dir: string, name: string): { cert: string; key: string } {
  const key = join(dir, `${name}-key.pem`);
  const cert = join(dir, `${name}-cert.pem`);
  certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', key]);
  const t = template(join(dir, `${name}.info`), [`cn = ${name}`, 'ca', 'cert_signing_key', 'expiration_days = 2']);
  certtool(['--generate-self-signed', '--load-privkey', key, '--template', t, '--outfile', cert]);
  return { cert, key };
}

function makeLeaf(
  dir: string,
  out: string,
  ca: { cert: string; key: string },
  role: 'server' | 'client',
): { cert: string; key: string } {
  const key = join(out, `${role}-key.pem`);
  const cert = join(out, `${role}-cert.pem`);
  certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', key]);
  const t = template(join(dir, `${role}-${Math.random().toString(36).slice(2)}.info`), [
    `cn = nbdsnap test ${role}`,
    ...(role === 'server' ? ['dns_name = localhost', 'ip_address = 127.0.0.1', 'tls_www_server'] : ['tls_www_client']),
    'encryption_key',
    'signing_key',
    'expiration_days = 2',
  ]);
  certtool([
    '--generate-certificate',
    '--load-privkey',
    key,
    '--load-ca-certificate',
    ca.cert,
    '--load-ca-privkey',
    ca.key,
    '--template',
    t,
    '--outfile',
    cert,
  ]);
  return { cert, key };
}

/** Make every credential under `root`. */
export function makeTlsFixture(root: string): TlsFixture {
  const work = join(root, 'work');
  const dirs = {
    serverDir: join(root, 'server'),
    clientDir: join(root, 'client'),
    noCertDir: join(root, 'nocert'),
    otherCaDir: join(root, 'other'),
  };
  for (const d of [work, ...Object.values(dirs)]) mkdirSync(d, { recursive: true });
  const ca = makeCa(work, 'ca');
  const other = makeCa(work, 'other-ca');
  makeLeaf(work, dirs.serverDir, ca, 'server');
  makeLeaf(work, dirs.clientDir, ca, 'client');
  makeLeaf(work, dirs.otherCaDir, other, 'client');
  for (const d of [dirs.serverDir, dirs.clientDir, dirs.noCertDir])
    execFileSync('cp', [ca.cert, join(d, 'ca-cert.pem')]);
  execFileSync('cp', [other.cert, join(dirs.otherCaDir, 'ca-cert.pem')]);
  const pskFile = join(root, 'keys.psk');
  const wrongPskFile = join(root, 'wrong.psk');
  execFileSync('psktool', ['-u', 'alice', '-p', pskFile], { stdio: 'ignore' });
  execFileSync('psktool', ['-u', 'alice', '-p', wrongPskFile], { stdio: 'ignore' });
  return { ...dirs, pskFile, wrongPskFile };
}
