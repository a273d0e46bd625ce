/**
 * Parsing of command-line values that yargs leaves as strings: image specs ("NAME=PATH",
 * "memory:64M", NBD URIs) and serve's options; sizes, ports and percentages are in numbers.ts
 * (re-exported here). Each failure is an NbdsnapError('BAD_ARGUMENT') whose message is the one
 * line the user sees.
 */
import { basename, extname } from 'node:path';
import { parseNbdUri } from '../client/nbd-client.ts';
import { NbdsnapError } from '../errors.ts';
import { isRemote } from '../remote/uri.ts';
import { parsePercent, parsePort, parseSize } from './numbers.ts';
import type { ServeOptions } from './serve.ts';

export { parsePercent, parsePort, parseSize } from './numbers.ts';

export interface ImageSpec {
  name: string;
  /** A file or block device path, an NBD URI (`remote`), or undefined for an in-memory device. */
  path?: string;
  memorySize?: number;
  /** `path` is an NBD URI: nbd://, nbds://, nbd+unix://, nbds+unix:// (src/block/nbd-device.ts). */
  remote?: boolean;
}

/**
 * "PATH", "NAME=PATH", "NAME=memory:SIZE" or "[NAME=]nbd://HOST:PORT/EXPORT" (any NBD URI). A
 * bare PATH is named after its file name, a bare URI after its export.
 */
export function parseImage(spec: string, defaultName?: string): ImageSpec {
  if (isRemote(spec)) {
    const { exportName } = parseNbdUri(spec); // a malformed URI is a usage error here
    const name = defaultName ?? exportName;
    if (name === '') throw new NbdsnapError('BAD_ARGUMENT', `image "${spec}" names no export: give it as NAME=${spec}`);
    return { name, path: spec, remote: true };
  }
  const eq = spec.indexOf('=');
  const name = eq > 0 ? spec.slice(0, eq) : (defaultName ?? basename(spec, extname(spec)));
  const target = eq > 0 ? spec.slice(eq + 1) : spec;
  if (target === '') throw new NbdsnapError('BAD_ARGUMENT', `image "${spec}" has no path`);
  if (Buffer.byteLength(name) > 4096) throw new NbdsnapError('BAD_ARGUMENT', `export name "${name}" is too long`);
  if (target.startsWith('memory:')) {
    return { name, memorySize: parseSize(target.slice('memory:'.length), 'memory size') };
  }
  if (isRemote(target)) {
    parseNbdUri(target);
    return { name, path: target, remote: true };
  }
  return { name, path: target };
}

/**
 * Everything about `serve`'s options that can be told wrong without opening anything: the image
 * specs (returned), names, the chunk and change-tracking block sizes. Used by the command line
 * (a failure is a usage error) and by `serve` itself.
 */
export function checkServeOptions(opts: ServeOptions): ImageSpec[] {
  if (opts.images.length === 0) throw new NbdsnapError('BAD_ARGUMENT', 'serve needs at least one IMAGE');
  if (opts.exportName !== undefined && opts.images.length > 1) {
    throw new NbdsnapError('BAD_ARGUMENT', '-x names one export; with several images use NAME=PATH');
  }
  const specs = opts.images.map((s) => parseImage(s, opts.exportName));
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s.name)) throw new NbdsnapError('BAD_ARGUMENT', `export name "${s.name}" is given twice`);
    if (s.name.includes('@')) throw new NbdsnapError('BAD_ARGUMENT', `device name "${s.name}" may not contain "@"`);
    seen.add(s.name);
  }
  const chunk = opts.chunkSize;
  if (chunk !== undefined && (chunk < 4096 || chunk > 1024 * 1024 || (chunk & (chunk - 1)) !== 0)) {
    throw new NbdsnapError('BAD_ARGUMENT', `--chunk-size ${chunk} must be a power of two from 4K to 1M`);
  }
  const cbt = opts.cbtBlockSize;
  if (cbt !== undefined && cbt !== 0 && (cbt < 4096 || (cbt & (cbt - 1)) !== 0 || cbt > 64 * 1024 * 1024)) {
    throw new NbdsnapError('BAD_ARGUMENT', `--cbt-block-size ${cbt} must be 0 (off) or a power of two from 4K to 64M`);
  }
  if (opts.port !== undefined) parsePort(opts.port);
  if (opts.lowSpacePercent !== undefined) parsePercent(opts.lowSpacePercent, '--low-space');
  const keep = opts.cbtKeepDeleted;
  if (keep !== undefined && (typeof keep !== 'number' || !Number.isSafeInteger(keep) || keep < 0)) {
    const given = typeof keep === 'number' && Number.isNaN(keep) ? '' : ` ${String(keep)}`;
    throw new NbdsnapError('BAD_ARGUMENT', `--cbt-keep-deleted${given} must be a whole number, 0 or more`);
  }
  return specs;
}
