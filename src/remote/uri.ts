/**
 * NBD URIs where a path is expected (an origin `NAME=nbd://...`, a store range
 * `nbd://...:START+COUNT`): recognising them, and the identity of the storage they name (the
 * endpoint and export, without credentials or TLS settings), so that two spellings of one export
 * are seen as one. Pure.
 */
import { type Endpoint, parseNbdUri } from '../client/nbd-uri.ts';

const SCHEMES = /^nbds?(\+unix)?:\/\//i;

/** Whether a path given on the command line names a remote NBD export. */
export const isRemote = (path: string): boolean => SCHEMES.test(path);

/** The storage an NBD URI names: 'nbd HOST:PORT/EXPORT' or 'nbd unix:PATH/EXPORT'. */
export function remoteKey(uri: string): string {
  const { endpoint, exportName } = parseNbdUri(uri);
  return `nbd ${endpointText(endpoint)}/${exportName}`;
}

export function endpointText(endpoint: Endpoint): string {
  if ('path' in endpoint) return `unix:${endpoint.path}`;
  const host = endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host;
  return `${host}:${endpoint.port}`;
}

/**
 * The URI without its query and user part (TLS file names, PSK identity), for messages and logs.
 * nbd+unix URIs keep `?socket=`, which is where they are.
 */
export function redactUri(uri: string): string {
  try {
    const u = new URL(uri);
    const socket = u.searchParams.get('socket');
    return `${u.protocol}//${u.host}${u.pathname}${socket === null ? '' : `?socket=${socket}`}`;
  } catch {
    return uri;
  }
}
