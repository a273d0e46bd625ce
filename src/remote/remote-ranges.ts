/**
 * Store ranges on remote NBD exports (`--store nbd://HOST:PORT/EXPORT[:START+COUNT]`). The store
 * does its I/O synchronously-addressed (StoreSpace opens ranges without awaiting), so the exports
 * are connected first, asynchronously (`openRemoteRanges`, before the specs are resolved; the
 * probe connects to a recorded range not given), and found here by URI afterwards. One device per
 * export, shared by every range on it; closed when its last range is released.
 *
 * A store needs FLUSH on its export (the journal's durability, and the copy-before-write
 * ordering, rest on it): an export without SEND_FLUSH, or a read-only one, is refused.
 */
import { NbdDevice, type RemoteSettings } from '../block/nbd-device.ts';
import { NbdsnapError } from '../errors.ts';
import { isRemote, redactUri, remoteKey } from './uri.ts';

interface Opened {
  device: NbdDevice;
  /** Distinct per export: stands in for (dev, ino) where the store compares files. */
  id: number;
  refs: number;
}

const opened = new Map<string, Opened>();
const opening = new Map<string, Promise<Opened>>();
let settings: RemoteSettings & { onEvent?: (event: string, detail: string) => void } = {};
let nextId = 1;

/** The settings of every remote store export opened from now on (serve's --remote-* options). */
export function configureRemoteRanges(s: RemoteSettings & { onEvent?: (event: string, detail: string) => void }): void {
  settings = s;
}

/** The path of a range spec ("URI:START+COUNT" or "URI"). */
const specPath = (spec: string): string => /^(.*):(\d+)\+(\d*)$/.exec(spec)?.[1] ?? spec;

/** Connect to the exports of the remote ones among `specs` (range specs); local ones are left alone. */
export async function openRemoteRanges(specs: readonly string[], readOnly = false): Promise<void> {
  for (const spec of specs) {
    const path = specPath(spec);
    if (isRemote(path)) await openRemote(path, readOnly);
  }
}

/** The export of `uri`, connected once. */
export async function openRemote(uri: string, readOnly = false): Promise<NbdDevice> {
  const key = remoteKey(uri);
  const known = opened.get(key);
  if (known !== undefined) return known.device;
  let p = opening.get(key);
  if (p === undefined) {
    p = connect(uri, readOnly);
    opening.set(key, p);
  }
  try {
    return (await p).device;
  } finally {
    opening.delete(key);
  }
}

async function connect(uri: string, readOnly: boolean): Promise<Opened> {
  const device = await NbdDevice.open(uri, { ...settings, readOnly });
  const name = redactUri(uri);
  const why =
    !readOnly && !device.capabilities.writable
      ? 'is read-only'
      : !device.capabilities.durable
        ? 'does not offer FLUSH, so nothing written to it can be made durable (the store journal and the copy-before-write order depend on it)'
        : undefined;
  if (why !== undefined) {
    await device.close();
    throw new NbdsnapError('BAD_CONFIG', `store export ${name} ${why}; refusing it as a store`);
  }
  const o = { device, id: nextId++, refs: 0 };
  opened.set(remoteKey(uri), o);
  return o;
}

/** An export already connected (by `openRemoteRanges` or the probe), taken by a range. */
export function takeRemote(uri: string): { device: NbdDevice; id: number } {
  const o = opened.get(remoteKey(uri));
  if (o === undefined) {
    throw new NbdsnapError('BAD_ARGUMENT', `store range on ${redactUri(uri)}: the export is not connected`);
  }
  o.refs += 1;
  return o;
}

/** The size of a connected export (resolving a range spec). */
export function remoteSize(uri: string): number {
  const o = opened.get(remoteKey(uri));
  if (o === undefined) {
    throw new NbdsnapError('BAD_ARGUMENT', `store range on ${redactUri(uri)}: the export is not connected`);
  }
  return o.device.size;
}

/** A range let go of its export; the last one closes the connection (after a final flush). */
export function releaseRemote(uri: string): Promise<void> {
  const key = remoteKey(uri);
  const o = opened.get(key);
  if (o === undefined) return Promise.resolve();
  o.refs -= 1;
  if (o.refs > 0) return Promise.resolve();
  opened.delete(key);
  return o.device.close();
}

/** Close every export connected and not taken by a range (probes that found nothing to use). */
export async function closeUnusedRemotes(): Promise<void> {
  for (const [key, o] of [...opened]) {
    if (o.refs > 0) continue;
    opened.delete(key);
    await o.device.close();
  }
}
