/**
 * TLS for the NBD server (NBD_OPT_STARTTLS), with nbdkit's options: `--tls=off|on|require`,
 * `--tls-certificates=DIR` (ca-cert.pem, server-cert.pem, server-key.pem: qemu's and nbdkit's
 * layout), `--tls-verify-peer` (client certificates checked against the CA) and `--tls-psk=FILE`
 * (psktool's `identity:hexkey` lines; it takes precedence over certificates, as in nbdkit).
 *
 * `loadServerTls` checks and reads everything at start (one BAD_CONFIG line on a fault);
 * `startServerTls` turns an accepted plaintext socket into a TLSSocket once the STARTTLS ACK is
 * out. The PSK file is read again for every handshake, so keys can be added or revoked without a
 * restart (GnuTLS's psk file works the same way).
 */
import { readFileSync } from 'node:fs';
import { isIP, type Socket } from 'node:net';
import { join } from 'node:path';
import { createSecureContext, type TLSSocket, type TlsOptions, Server as TlsServer } from 'node:tls';
import { errorMessage, NbdsnapError } from '../errors.ts';

export const TLS_MODES = ['off', 'on', 'require'] as const;
export type TlsMode = (typeof TLS_MODES)[number];

/** What the command line asks for. */
export interface TlsSettings {
  mode: TlsMode;
  certificates?: string | undefined;
  verifyPeer?: boolean | undefined;
  psk?: string | undefined;
}

/** A server's TLS, ready for handshakes. */
export interface ServerTls {
  mode: 'on' | 'require';
  /** 'x509' or 'psk': how clients authenticate the server (and themselves). */
  kind: 'x509' | 'psk';
  /** The options of the TLS server side, keys and certificates already read. */
  options: TlsOptions;
}

/**
 * Parse a psktool key file: one `identity:hexkey` per line (blank lines ignored). Pure: `where`
 * names the file in errors.
 */
export function parsePskFile(text: string, where: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') continue;
    const colon = line.lastIndexOf(':');
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1).trim();
    if (colon <= 0 || !/^([0-9a-fA-F]{2})+$/.test(hex)) {
      throw new NbdsnapError('BAD_CONFIG', `${where}:${i + 1}: not an identity:hexkey line (made by psktool)`);
    }
    keys.set(identity, Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) throw new NbdsnapError('BAD_CONFIG', `${where}: no keys (psktool -u NAME -p ${where})`);
  return keys;
}

function readPem(dir: string, name: string, what: string): Buffer {
  const path = join(dir, name);
  try {
    return readFileSync(path);
  } catch (err) {
    throw new NbdsnapError('BAD_CONFIG', `--tls-certificates: cannot read ${what} ${path}: ${errorCode(err)}`);
  }
}

const errorCode = (err: unknown): string => (err as { code?: string }).code ?? errorMessage(err);

function readPsk(path: string): Map<string, Buffer> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new NbdsnapError('BAD_CONFIG', `--tls-psk: cannot read ${path}: ${errorCode(err)}`);
  }
  return parsePskFile(text, path);
}

/** The combination of TLS options, as written (a usage error: BAD_ARGUMENT). Pure. */
export function checkTlsSettings(s: TlsSettings): void {
  if (s.mode === 'off') {
    if (s.certificates !== undefined || s.psk !== undefined || s.verifyPeer === true) {
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        '--tls-certificates, --tls-psk and --tls-verify-peer need --tls=on or require',
      );
    }
    return;
  }
  if (s.psk !== undefined && s.verifyPeer === true) {
    throw new NbdsnapError(
      'BAD_ARGUMENT',
      '--tls-verify-peer is for certificates: a PSK already authenticates the client',
    );
  }
  if (s.psk === undefined && s.certificates === undefined) {
    throw new NbdsnapError('BAD_ARGUMENT', `--tls=${s.mode} needs --tls-certificates=DIR or --tls-psk=FILE`);
  }
}

/** Check the TLS options and read the keys (a file fault is BAD_CONFIG); undefined when TLS is off. */
export function loadServerTls(s: TlsSettings): ServerTls | undefined {
  checkTlsSettings(s);
  if (s.mode === 'off') return undefined;
  if (s.psk !== undefined) {
    const path = s.psk;
    readPsk(path); // refuse a bad file at start
    const pskCallback = (_socket: TLSSocket, identity: string): Buffer | null => {
      try {
        return readPsk(path).get(identity) ?? null;
      } catch {
        return null; // the file went bad since start: refuse this handshake, keep serving
      }
    };
    // TLS 1.3 only: its PSK key exchange (with ECDHE) is what GnuTLS clients offer first, and
    // OpenSSL's TLS 1.2 PSK suites would need the cipher list opened to plain PSK.
    return { mode: s.mode, kind: 'psk', options: { minVersion: 'TLSv1.3', pskCallback } };
  }
  const dir = s.certificates as string; // checkTlsSettings: PSK or certificates
  const cert = readPem(dir, 'server-cert.pem', 'the server certificate');
  const key = readPem(dir, 'server-key.pem', 'the server key');
  const verifyPeer = s.verifyPeer === true;
  const ca = verifyPeer ? readPem(dir, 'ca-cert.pem', 'the CA certificate') : undefined;
  const options: TlsOptions = {
    cert,
    key,
    minVersion: 'TLSv1.2',
    requestCert: verifyPeer,
    rejectUnauthorized: verifyPeer,
    ...(ca === undefined ? {} : { ca }),
  };
  try {
    createSecureContext(options); // a key that does not match its certificate is refused now
  } catch (err) {
    throw new NbdsnapError('BAD_CONFIG', `--tls-certificates ${dir}: ${errorMessage(err)}`);
  }
  return { mode: s.mode, kind: 'x509', options };
}

/**
 * The server side of the TLS handshake on a socket whose STARTTLS ACK has been written. Resolves
 * with the secure socket once the handshake is done and the client's certificate (if required)
 * checked against the CA; rejects, with the socket destroyed, otherwise. A tls.Server that never
 * listens is handed the socket, so Node applies its own server rules (rejectUnauthorized).
 */
export function startServerTls(socket: Socket, tls: ServerTls): Promise<TLSSocket> {
  const server = new TlsServer({ ...tls.options, handshakeTimeout: HANDSHAKE_TIMEOUT_MS });
  return new Promise((resolve, reject) => {
    server.once('secureConnection', (secure: TLSSocket) => resolve(secure));
    server.once('tlsClientError', (err: Error, secure: TLSSocket) => {
      // A certificate refused under --tls-verify-peer ends as a hang-up: name the real cause.
      const refused = secure.authorizationError;
      secure.destroy();
      socket.destroy();
      const reason = (err as { reason?: unknown }).reason;
      const why = typeof reason === 'string' ? new Error(reason) : err;
      reject(refused == null ? why : new Error(`client certificate refused: ${String(refused)}`));
    });
    server.emit('connection', socket);
  });
}

/** A client that stalls in the TLS handshake is dropped after this. */
const HANDSHAKE_TIMEOUT_MS = 30_000;

/** Whether a -b address only reaches this machine (no warning needed without TLS). */
export function isLoopback(address: string): boolean {
  if (address === 'localhost') return true;
  const a = address.replace(/^\[|\]$/g, '');
  if (isIP(a) === 4) return a.startsWith('127.');
  if (isIP(a) === 6) return a === '::1' || /^::ffff:127\./i.test(a);
  return false;
}

/** The one-line warning for a listener others can reach without TLS, or undefined. */
export function plaintextWarning(bind: string, tls: TlsMode): string | undefined {
  if (tls !== 'off' || isLoopback(bind)) return undefined;
  return `listening on ${bind} without TLS: NBD has no authentication, anyone who reaches it can read and write the exports (use --tls=require)`;
}
