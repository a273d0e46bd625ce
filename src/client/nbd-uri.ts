/**
 * NBD URIs (libnbd's conventions): nbd[s]://[USER@]HOST[:PORT]/EXPORT and
 * nbd[s]+unix:///EXPORT?socket=PATH; the nbds forms carry TLS settings in the query
 * (tls-certificates, tls-psk-file, tls-username, tls-verify-peer). Pure.
 */
import { NbdsnapError } from '../errors.ts';
import { type ClientTls, tlsFromUri } from './tls.ts';

export type Endpoint = { host: string; port: number } | { path: string };

/** Where `uri` points, which export, and the TLS it asks for (nbds forms only). */
export function parseNbdUri(uri: string): { endpoint: Endpoint; exportName: string; tls?: ClientTls } {
  let u: URL | undefined;
  try {
    u = new URL(uri);
  } catch {
    u = undefined;
  }
  if (u !== undefined) {
    const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
    const secure = u.protocol === 'nbds:' || u.protocol === 'nbds+unix:';
    const tls = secure ? { tls: tlsFromUri(u) } : {};
    if (u.protocol === 'nbd:' || u.protocol === 'nbds:') {
      // URL keeps an IPv6 literal's brackets, which connect() does not take.
      const host = u.hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1';
      return { endpoint: { host, port: Number(u.port || 10809) }, exportName, ...tls };
    }
    if (u.protocol === 'nbd+unix:' || u.protocol === 'nbds+unix:') {
      const path = u.searchParams.get('socket');
      if (path !== null) return { endpoint: { path }, exportName, ...tls };
    }
  }
  throw new NbdsnapError(
    'BAD_ARGUMENT',
    `not an NBD URI: ${uri} (nbd[s]://HOST:PORT/EXPORT or nbd[s]+unix:///EXPORT?socket=PATH)`,
  );
}
