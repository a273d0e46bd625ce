/**
 * `nbdsnap serve`: open the images, put each behind its copy-on-write origin layer, open the
 * difference store and bring back every snapshot, register the exports, listen, print how to
 * connect, write the pid file once connections are accepted, and stop gracefully on SIGTERM /
 * SIGINT (shutdown.ts: bounded by --shutdown-timeout; a second signal ends it at once).
 */
import type { BlockDevice } from '../block/device.ts';
import { FileDevice } from '../block/file-device.ts';
import { MemoryDevice } from '../block/memory-device.ts';
import { native } from '../block/native.ts';
import { NbdDevice, type RemoteSettings } from '../block/nbd-device.ts';
import { lockingAvailable, refuseAliases } from '../block/ownership.ts';
import { ControlServer } from '../control/server.ts';
import { type LogFormat, Logger, type LogLevel } from '../log.ts';
import { startMetrics } from '../metrics/metrics.ts';
import { closeUnusedRemotes, configureRemoteRanges, openRemoteRanges } from '../remote/remote-ranges.ts';
import { redactUri } from '../remote/uri.ts';
import { ExportRegistry } from '../server/exports.ts';
import { type ListenSpec, NbdServer, type ServerLimits, socketActivationFds } from '../server/server.ts';
import { loadServerTls, plaintextWarning, type TlsSettings } from '../server/tls.ts';
import { SnapshotManager } from '../snapshot/manager.ts';
import { StoreSpace } from '../store/space.ts';
import { checkServeOptions, type ImageSpec, parsePort } from './args.ts';
import { forkServer, isForkChild, reportReady, watchParent } from './daemon.ts';
import { checkPidFile, writePidFile } from './pid-file.ts';
import { stopOnSignals } from './shutdown.ts';
import { defaultDescription } from './serve-descriptions.ts';

export interface ServeOptions {
  images: string[];
  exportName?: string | undefined;
  /** The description of every export (the demo's); `descriptions` wins. */
  description?: string | undefined;
  /** Descriptions by export name; an export without one gets defaultDescription (no paths). */
  descriptions?: Record<string, string> | undefined;
  /** Run in the background once serving (daemon.ts). */
  fork?: boolean | undefined;
  /** Stop gracefully when the parent process exits (daemon.ts). */
  exitWithParent?: boolean | undefined;
  port?: number | undefined;
  bind: string;
  socket?: string | undefined;
  readOnly: boolean;
  pidFile?: string | undefined;
  logLevel: LogLevel;
  /** `json` (default) or `text`. */
  logFormat?: LogFormat | undefined;
  /** ADDR:PORT to serve Prometheus metrics on (src/metrics/README.md). */
  metrics?: string | undefined;
  store?: string[] | undefined;
  chunkSize?: number | undefined;
  transient?: boolean | undefined;
  control?: string | undefined;
  lowSpacePercent?: number | undefined;
  /** Change-tracking block size in bytes; 0 turns tracking off (default 64 KiB). */
  cbtBlockSize?: number | undefined;
  /** --tls, --tls-certificates, --tls-verify-peer, --tls-psk (default off). */
  tls?: TlsSettings | undefined;
  /** Points of deleted snapshots kept per device for `--since` (default 1). */
  cbtKeepDeleted?: number | undefined;
  /** --max-buffer, --handshake-timeout (ms here), --max-connections (defaults: DEFAULT_LIMITS). */
  limits?: Partial<ServerLimits> | undefined;
  /** Default merge rate limit in bytes per second (0, the default: none). */
  mergeSpeed?: number | undefined;
  /** Memory for verified store copies kept for snapshot reads (default 32 MiB; 0: none). */
  copyCache?: number | undefined;
  /** Remote (nbd://) origins and store ranges: --remote-timeout (ms here), --remote-connections. */
  remote?: RemoteSettings | undefined;
  /** Milliseconds a graceful stop may take before it ends without the clean mark; 0: no limit. */
  shutdownTimeoutMs?: number | undefined;
  /** Run once the server is up (the demo takes its snapshot here); may print more lines. */
  afterStart?: (manager: SnapshotManager) => Promise<string[]>;
}

export async function serve(opts: ServeOptions): Promise<void> {
  if (opts.fork === true && !isForkChild()) await forkServer();
  const log = new Logger(opts.logLevel, { format: opts.logFormat });
  const specs = checkServeOptions(opts);
  if (opts.pidFile !== undefined) checkPidFile(opts.pidFile);
  const tls = loadServerTls(opts.tls ?? { mode: 'off' });
  const tcp = opts.port !== undefined || opts.socket === undefined;
  const exposed = tcp ? plaintextWarning(opts.bind, tls?.mode ?? 'off') : undefined;
  if (exposed !== undefined) log.warn(exposed);
  const remoteEvent = (uri: string) => (event: string, detail: string) =>
    (event === 'reconnected' ? log.info : log.warn).call(log, `remote ${event}`, { remote: uri, detail });
  configureRemoteRanges({ ...opts.remote, onEvent: remoteEvent('store') });
  await openRemoteRanges(opts.store ?? []);
  const storeRanges = (opts.store ?? []).map((s) => StoreSpace.resolve(s));
  // The same storage under two names (a loop device over the origin, a partition of a store
  // disk) is refused before anything is opened; each open then claims what it uses.
  refuseAliases(
    specs.map((s) => ({ name: s.name, path: s.path, readOnly: opts.readOnly })),
    storeRanges,
  );
  if (native === undefined) log.warn('native helper not built: TRIM is ignored and block status reports all data');
  if (!lockingAvailable()) log.warn('native helper not built: images and store ranges are not locked');
  const devices: { name: string; device: BlockDevice; description: string; path?: string | undefined }[] = [];
  for (const spec of specs) {
    const device = await openImage(spec, opts, log);
    devices.push({
      name: spec.name,
      device,
      description: opts.descriptions?.[spec.name] ?? opts.description ?? defaultDescription(spec),
      path: spec.path,
    });
  }

  const registry = new ExportRegistry();
  const manager = new SnapshotManager(registry, log, {
    devices,
    store: storeRanges,
    chunkSize: opts.chunkSize,
    transient: opts.transient ?? false,
    lowSpacePercent: opts.lowSpacePercent ?? 10,
    readOnlyOrigins: opts.readOnly,
    cbtBlockSize: opts.cbtBlockSize ?? 64 * 1024,
    cbtKeepDeleted: opts.cbtKeepDeleted,
    mergeSpeed: opts.mergeSpeed,
    copyCache: opts.copyCache,
  });
  await manager.start();
  const control = opts.control === undefined ? undefined : new ControlServer(manager, log);
  if (control !== undefined) await control.listen(opts.control as string);

  const server = new NbdServer(registry, log, tls, opts.limits);
  const metrics = await (opts.metrics === undefined
    ? undefined
    : startMetrics(opts.metrics, { manager, exports: registry, server, log }).catch(async (err: unknown) => {
        await control?.close();
        throw err;
      }));
  // A refused listener (a live server's -k socket, a port in use) leaves no control socket behind.
  const where = await server.listen(listenSpecs(opts)).catch(async (err: unknown) => {
    await control?.close();
    await metrics?.close();
    throw err;
  });
  const extra = (await opts.afterStart?.(manager)) ?? [];
  const lines = [...connectHelp(where, registry), ...extra];
  if (!isForkChild()) for (const line of lines) process.stdout.write(`${line}\n`);
  log.info('listening', { on: where, exports: registry.list().map((e) => e.name), control: opts.control });
  if (opts.pidFile !== undefined) writePidFile(opts.pidFile, process.pid);
  if (isForkChild()) reportReady(lines);
  if (opts.exitWithParent === true) {
    watchParent(() => {
      log.info('parent exited: stopping');
      process.kill(process.pid, 'SIGTERM');
    });
  }

  // What a stop waits for, in order (src/cli/README.md, "Stopping"): a second signal or
  // --shutdown-timeout ends it at once, without the store's clean mark.
  const timeoutMs = opts.shutdownTimeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS;
  await stopOnSignals(
    log,
    () => [
      {
        name: 'connections',
        run: () => server.close(connectionGrace(timeoutMs)),
        detail: () => ({ connections: server.connectionCount }),
      },
      { name: 'control and metrics', run: async () => void (await Promise.all([control?.close(), metrics?.close()])) },
      // A transient store's merge must finish (its snapshots go at exit): not bounded.
      { name: 'merges of a transient store', run: () => manager.beforeStop(), unbounded: true },
      { name: 'merges', run: () => manager.stopMerges() },
      { name: 'device flush', run: async () => void (await Promise.all(devices.map((d) => d.device.flush()))) },
      { name: 'store', run: () => manager.close(), clean: true },
      { name: 'devices', run: async () => void (await Promise.all(devices.map((d) => d.device.close()))) },
      { name: 'remote exports', run: () => closeUnusedRemotes() },
    ],
    { timeoutMs },
  );
  log.info('stopped');
  // Whatever still holds the event loop now (a timer, a socket of a remote that never closes)
  // must not keep a stopped server alive.
  setTimeout(() => {
    log.warn('still running after the stop: exiting', { resources: process.getActiveResourcesInfo() });
    process.exit(0);
  }, 2000).unref();
}

/** --shutdown-timeout's default: 30 s. */
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 30_000;

/** How long connections get to finish before clients still connected are cut off: 10 s, at most a third of the timeout. */
export function connectionGrace(timeoutMs: number): number {
  return timeoutMs > 0 ? Math.min(10_000, Math.floor(timeoutMs / 3)) : 10_000;
}

async function openImage(spec: ImageSpec, opts: ServeOptions, log: Logger): Promise<BlockDevice> {
  const readOnly = opts.readOnly;
  if (spec.memorySize !== undefined) return new MemoryDevice(spec.memorySize);
  if (spec.remote !== true) return FileDevice.open(spec.path as string, { readOnly });
  const remote = redactUri(spec.path as string);
  const device = await NbdDevice.open(spec.path as string, {
    ...opts.remote,
    readOnly,
    onEvent: (event, detail) =>
      (event === 'reconnected' ? log.info : log.warn).call(log, `remote ${event}`, {
        device: spec.name,
        remote,
        detail,
      }),
  });
  const facts = { device: spec.name, remote, size: device.size, connections: device.connections };
  log.info('remote origin connected', facts);
  if (!readOnly && !device.capabilities.writable)
    log.warn('remote export is read-only: the origin is served read-only', facts);
  if (!device.capabilities.durable) {
    log.warn(
      'remote export offers no FLUSH: a FLUSH or FUA from clients cannot make their writes durable on it (snapshot copies in the store still are, before the origin write)',
      facts,
    );
  }
  return device;
}

function listenSpecs(opts: ServeOptions): ListenSpec[] {
  const fds = socketActivationFds();
  if (fds.length > 0) return fds.map((fd) => ({ fd }));
  const specs: ListenSpec[] = [];
  if (opts.socket !== undefined) specs.push({ unix: opts.socket });
  if (opts.socket === undefined || opts.port !== undefined) {
    specs.push({ tcp: { host: opts.bind, port: parsePort(opts.port ?? 10809) } });
  }
  return specs;
}

/** The lines printed on start: one URI per export, and the client commands to try. */
export function connectHelp(where: string[], registry: ExportRegistry): string[] {
  const lines: string[] = [];
  const tcp = where.find((w) => /^nbds?:\/\//.test(w));
  for (const entry of registry.list()) {
    for (const w of where) {
      if (/^nbds?:\/\//.test(w)) lines.push(`nbdsnap: export "${entry.name}" at ${w}${uriName(entry.name)}`);
      else if (/^nbds?\+unix/.test(w))
        lines.push(`nbdsnap: export "${entry.name}" at ${w.replace('/?', `/${uriName(entry.name)}?`)}`);
    }
  }
  const first = registry.list()[0];
  if (tcp !== undefined && first !== undefined) {
    const uri = `${tcp}${uriName(first.name)}`;
    const m = /^nbd:\/\/(.*):(\d+)\/$/.exec(tcp); // under TLS, qemu and nbd-client need credential flags
    lines.push(`nbdsnap: try: nbdinfo ${uri}${m === null ? '?tls-certificates=DIR' : ''}`);
    if (m !== null) lines.push(`nbdsnap: try: qemu-img info -f raw ${uri}`);
    if (m !== null)
      lines.push(`nbdsnap: try: nbd-client ${m[1]} ${m[2]} /dev/nbd0 -N ${first.name}   (after modprobe nbd)`);
  }
  return lines;
}

/** An export name as a URI path: percent-encoded, but '@' kept readable (DEVICE@SNAP). */
const uriName = (name: string): string => encodeURIComponent(name).replaceAll('%40', '@');
