/**
 * The client side of NBD over TLS, with libnbd's URI conventions: `nbds://` and `nbds+unix://`
 * require TLS; the query carries `tls-certificates=DIR` (ca-cert.pem, and client-cert.pem with
 * client-key.pem if present, the layout libnbd and qemu read), `tls-psk-file=FILE` (psktool's
 * format), `tls-username=NAME` (the PSK identity; the login name by default, as in libnbd, and
 * the URI's user part `nbds://alice@host/` too) and `tls-verify-peer=false`.
 *
 * The server's certificate is checked against the CA and, over TCP, against the host name of the
 * URI (an IP address matches an IP SAN), as libnbd does; over a Unix socket there is no host
 * name, so only the CA is checked. Without `tls-certificates` the system's CAs are used.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isIP, type Socket } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { type ConnectionOptions, type TLSSocket, connect as tlsConnect } from 'node:tls';
import { NbdsnapError } from '../errors.ts';
import { parsePskFile } from '../server/tls.ts';

/** TLS as a URI asks for it. */
export interface ClientTls {
  certificates?: string | undefined;
  pskFile?: string | undefined;
  username?: string | undefined;
  /** Check the server's certificate (default true). */
  verifyPeer?: boolean | undefined;
}

/** The TLS settings of an nbds:// or nbds+unix:// URI's query and user part. Pure. */
export function tlsFromUri(u: URL): ClientTls {
  const q = u.searchParams;
  const verify = q.get('tls-verify-peer');
  if (verify !== null && !['true', 'false', '1', '0'].includes(verify)) {
    throw new NbdsnapError('BAD_ARGUMENT', `tls-verify-peer=${verify}: give true or false`);
  }
  const user = q.get('tls-username') ?? (u.username === '' ? undefined : decodeURIComponent(u.username));
  return {
    certificates: q.get('tls-certificates') ?? undefined,
    pskFile: q.get('tls-psk-file') ?? undefined,
    username: user,
    verifyPeer: verify === null ? true : verify === 'true' || verify === '1',
  };
}

function read(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new NbdsnapError('BAD_CONFIG', `cannot read ${what} ${path}: ${(err as { code?: string }).code ?? err}`);
  }
}

/** libnbd's default PSK identity: the login name. */
function loginName(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? process.env.LOGNAME ?? ''; // no passwd entry (a container)
  }
}

/** Node's options for the handshake; `host` is undefined over a Unix socket. */
export function clientTlsOptions(tls: ClientTls, host: string | undefined): ConnectionOptions {
  if (tls.pskFile !== undefined) {
    const identity = tls.username ?? loginName();
    const keys = parsePskFile(read(tls.pskFile, 'the PSK file').toString('utf8'), tls.pskFile);
    const psk = keys.get(identity);
    if (psk === undefined) {
      throw new NbdsnapError('BAD_CONFIG', `${tls.pskFile} has no key for identity "${identity}" (tls-username)`);
    }
    return {
      minVersion: 'TLSv1.3',
      pskCallback: () => ({ identity, psk }),
      checkServerIdentity: () => undefined, // the key authenticates the server
    };
  }
  const opts: ConnectionOptions = { minVersion: 'TLSv1.2', rejectUnauthorized: tls.verifyPeer !== false };
  const dir = tls.certificates;
  if (dir !== undefined) {
    opts.ca = read(join(dir, 'ca-cert.pem'), 'the CA certificate');
    const cert = join(dir, 'client-cert.pem');
    if (existsSync(cert)) {
      opts.cert = read(cert, 'the client certificate');
      opts.key = read(join(dir, 'client-key.pem'), 'the client key');
    }
  }
  if (host === undefined) opts.checkServerIdentity = () => undefined;
  else {
    opts.host = host;
    if (isIP(host) === 0) opts.servername = host;
  }
  return opts;
}

/** An OpenSSL error's reason ('tlsv13 alert certificate required'), not its whole error stack line. */
export function tlsErrorText(err: Error): string {
  const reason = (err as { reason?: unknown }).reason;
  return typeof reason === 'string' && reason !== '' ? reason : err.message;
}

/** TLS over a socket whose STARTTLS was acknowledged; the secure socket once the handshake is done. */
export function startClientTls(socket: Socket, options: ConnectionOptions): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = tlsConnect({ ...options, socket });
    const fail = (err: Error) => {
      secure.destroy();
      reject(new NbdsnapError('EIO', `TLS handshake failed: ${tlsErrorText(err)}`, { cause: err }));
    };
    const closed = () => fail(new Error('the server closed the connection'));
    secure.once('error', fail);
    secure.once('close', closed);
    secure.once('secureConnect', () => {
      secure.off('error', fail);
      secure.off('close', closed);
      resolve(secure);
    });
  });
}
