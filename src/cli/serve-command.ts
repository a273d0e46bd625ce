/**
 * `nbdsnap serve` and `nbdsnap demo` on the command line: serve's options in one table, from
 * which both the yargs options and the check of a `--config` JSON file are made, and the step
 * from the parsed arguments to checked ServeOptions (serve.ts does the serving).
 */
import { readFileSync } from 'node:fs';
import type { Argv, Options } from 'yargs';
import { NbdsnapError } from '../errors.ts';
import { errorText } from '../error-text.ts';
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from '../log.ts';
import { parseMetricsAddress } from '../metrics/endpoint.ts';
import { checkTlsSettings, TLS_MODES, type TlsMode } from '../server/tls.ts';
import { checkServeOptions, type ImageSpec, parsePort, parseSize } from './args.ts';
import { defineCommand } from './command.ts';
import type { ServeOptions } from './serve.ts';
import { type Arity, exportDescriptions, scanDescriptions } from './serve-descriptions.ts';

/** How a value is given: on the command line, and as a JSON value in a config file. */
type Kind = 'string' | 'strings' | 'boolean' | 'number' | 'size' | 'choice' | 'texts';

interface OptionSpec {
  kind: Kind;
  describe: string;
  alias?: string | string[];
  default?: unknown;
  choices?: readonly string[];
}

export const SERVE_OPTIONS: Record<string, OptionSpec> = {
  'export-name': { kind: 'string', alias: ['x', 'e'], describe: 'export name (one image only)' },
  description: {
    kind: 'string',
    alias: 'D',
    describe: 'description of the image it follows; repeat after each image',
  },
  port: { kind: 'size', alias: 'p', describe: 'TCP port [default: 10809]' },
  bind: { kind: 'string', alias: 'b', default: '127.0.0.1', describe: 'TCP address' },
  socket: { kind: 'string', alias: ['k', 'U'], describe: 'Unix socket path' },
  'read-only': { kind: 'boolean', alias: 'r', default: false, describe: 'refuse writes' },
  'pid-file': { kind: 'string', alias: 'P', describe: 'write the PID once serving' },
  'log-level': { kind: 'choice', choices: LOG_LEVELS, default: 'info', describe: 'error, warn, info, debug' },
  'log-format': {
    kind: 'choice',
    choices: LOG_FORMATS,
    default: 'json',
    describe: 'log lines on stderr: json or text',
  },
  metrics: { kind: 'string', describe: 'serve Prometheus metrics at ADDR:PORT (GET /metrics)' },
  store: { kind: 'strings', describe: 'difference store range PATH[:START+COUNT] (sectors); repeatable' },
  'chunk-size': { kind: 'size', describe: "copy-on-write chunk, 4K..1M [default: 64K, or the store's]" },
  transient: { kind: 'boolean', default: false, describe: 'keep snapshot maps in memory only (gone at exit)' },
  control: { kind: 'string', describe: 'control socket path (created mode 0600)' },
  'cbt-block-size': { kind: 'size', default: '64K', describe: 'change-tracking block; 0 turns tracking off' },
  'cbt-keep-deleted': {
    kind: 'number',
    default: 1,
    describe: 'points of deleted snapshots kept per device for backup --since (newest first)',
  },
  'merge-speed': { kind: 'size', default: '0', describe: 'merge rate limit, bytes/s (e.g. 64M); 0: none' },
  'copy-cache': {
    kind: 'size',
    default: '32M',
    describe: 'memory for verified store copies kept for snapshot reads; 0: none',
  },
  'low-space': { kind: 'number', default: 10, describe: 'low-space event below this % free' },
  fork: { kind: 'boolean', default: false, describe: 'run in the background once serving (after --pid-file)' },
  'exit-with-parent': { kind: 'boolean', default: false, describe: 'stop when the process that started it exits' },
  tls: { kind: 'choice', choices: TLS_MODES, default: 'off', describe: 'STARTTLS: off, on (optional), require' },
  'tls-certificates': { kind: 'string', describe: 'DIR with ca-cert.pem, server-cert.pem, server-key.pem' },
  'tls-verify-peer': { kind: 'boolean', default: false, describe: 'require client certificates signed by the CA' },
  'tls-psk': { kind: 'string', describe: "pre-shared keys FILE (psktool's identity:hexkey lines)" },
  'max-buffer': {
    kind: 'size',
    default: '64M',
    describe: 'memory for request payloads and unsent replies, all clients together; reading waits beyond it',
  },
  'handshake-timeout': {
    kind: 'number',
    default: 10,
    describe: 'seconds a client has to finish the handshake; 0 for no limit',
  },
  'max-connections': { kind: 'number', default: 4096, describe: 'clients served at once; more are closed at accept' },
  'shutdown-timeout': {
    kind: 'number',
    default: 30,
    describe:
      'seconds a graceful stop (SIGTERM, SIGINT) may take; then it ends without the clean mark (the next start replays the journal); 0 for no limit',
  },
  'remote-timeout': {
    kind: 'number',
    default: 60,
    describe: 'seconds a request to a remote nbd:// origin or store may wait (reconnecting) before it fails with EIO',
  },
  'remote-connections': {
    kind: 'number',
    default: 4,
    describe: 'connections to a remote export that allows several (CAN_MULTI_CONN); one otherwise',
  },
};

function yargsOption(spec: OptionSpec): Options {
  const type = spec.kind === 'boolean' ? 'boolean' : spec.kind === 'number' ? 'number' : 'string';
  return {
    type,
    describe: spec.describe,
    ...(spec.kind === 'strings' ? { array: true } : {}),
    ...(spec.alias === undefined ? {} : { alias: spec.alias }),
    ...(spec.default === undefined ? {} : { default: spec.default }),
    ...(spec.choices === undefined ? {} : { choices: spec.choices as string[] }),
  };
}

const camel = (name: string) => name.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());

/** The option a config key names (its long name, camelCase form or alias), or undefined. */
function optionFor(key: string): [string, OptionSpec] | undefined {
  if (key === 'images') return ['images', { kind: 'strings', describe: 'images' }];
  if (key === 'descriptions') return ['descriptions', { kind: 'texts', describe: 'descriptions by export name' }];
  for (const [name, spec] of Object.entries(SERVE_OPTIONS)) {
    const aliases = spec.alias === undefined ? [] : [spec.alias].flat();
    if (key === name || key === camel(name) || aliases.includes(key)) return [name, spec];
  }
  return undefined;
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v)}`;
}

/** Whether `v` is a valid JSON value for an option of this kind. */
function fits(spec: OptionSpec, v: unknown): boolean {
  switch (spec.kind) {
    case 'string':
      return typeof v === 'string';
    case 'strings':
      return typeof v === 'string' || (Array.isArray(v) && v.every((x) => typeof x === 'string'));
    case 'boolean':
      return typeof v === 'boolean';
    case 'number':
      return typeof v === 'number' && Number.isFinite(v);
    case 'size':
      return typeof v === 'string' || (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0);
    case 'choice':
      return typeof v === 'string' && (spec.choices ?? []).includes(v);
    case 'texts':
      return (
        typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string')
      );
  }
}

const EXPECTED: Record<Kind, string> = {
  string: 'a string',
  strings: 'a string or a list of strings',
  boolean: 'true or false',
  number: 'a number',
  size: 'a number or a string such as "64K"',
  choice: 'one of',
  texts: 'an object of strings, e.g. {"disk": "the web server\'s disk"}',
};

/**
 * Read and check a `--config` file: a JSON object whose keys are serve's options (or `images`),
 * each with a value of the option's type. Every failure is one BAD_CONFIG line naming the file.
 */
export function loadConfig(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new NbdsnapError(
      'BAD_CONFIG',
      `cannot read config file ${path}: ${errorText(err).replace(/^cannot open \S+: /, '')}`,
    );
  }
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (err) {
    throw new NbdsnapError('BAD_CONFIG', `config file ${path} is not valid JSON: ${errorText(err)}`);
  }
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw new NbdsnapError('BAD_CONFIG', `config file ${path} must hold a JSON object, e.g. {"images": ["disk.img"]}`);
  }
  for (const [key, value] of Object.entries(config)) {
    const found = optionFor(key);
    if (found === undefined) throw new NbdsnapError('BAD_CONFIG', `config file ${path}: unknown option "${key}"`);
    const [name, spec] = found;
    if (!fits(spec, value)) {
      const expected = spec.kind === 'choice' ? `one of ${(spec.choices ?? []).join(', ')}` : EXPECTED[spec.kind];
      throw new NbdsnapError(
        'BAD_CONFIG',
        `config file ${path}: "${key}" must be ${expected}, not ${typeName(value)}${key === name ? '' : ` (option ${name})`}`,
      );
    }
  }
  return config as Record<string, unknown>;
}

type ServeArgs = Record<string, unknown> & { images?: unknown; descriptions?: Record<string, string> };

/** How many values serve's option `name` (long name or alias) takes on the command line. */
function arity(name: string): Arity {
  if (name === 'config') return 1;
  const found = optionFor(name);
  if (found === undefined || found[1].kind === 'boolean') return 0;
  return found[1].kind === 'strings' ? 'many' : 1;
}

const optString = (v: unknown): string | undefined => (v === undefined ? undefined : String(v));
const strings = (v: unknown): string[] => (v === undefined ? [] : [v].flat().map(String));

export const serveCommand = defineCommand({
  command: 'serve [images..]',
  describe: 'serve images (files or block devices) over NBD',
  builder: (y: Argv) => {
    let b = y.positional('images', {
      describe: 'PATH, NAME=PATH, NAME=memory:SIZE, or NAME=nbd://HOST:PORT/EXPORT; several may be given',
      type: 'string',
      array: true,
      default: [],
    });
    for (const [name, spec] of Object.entries(SERVE_OPTIONS)) b = b.option(name, yargsOption(spec));
    // Only in a --config file (an object); declared so that strict mode lets it through.
    b = b.option('descriptions', { hidden: true, describe: 'descriptions by export name (--config only)' });
    return b.config(
      'config',
      'JSON file with any of these options (images, store, ...)',
      loadConfig,
    ) as Argv<ServeArgs>;
  },
  parse: (a: ServeArgs, argv: string[]): ServeOptions => {
    for (const [name, spec] of Object.entries(SERVE_OPTIONS)) {
      const value = a[name];
      const empty = spec.kind === 'strings' ? Array.isArray(value) && value.length === 0 : false;
      if (empty || (spec.kind !== 'boolean' && spec.kind !== 'number' && [value].flat().includes(''))) {
        throw new NbdsnapError('BAD_ARGUMENT', `--${name} needs a value`);
      }
    }
    const opts: ServeOptions = {
      images: strings(a.images),
      store: a.store === undefined ? undefined : strings(a.store),
      chunkSize: a['chunk-size'] === undefined ? undefined : parseSize(String(a['chunk-size']), 'chunk size'),
      transient: a.transient === true,
      control: optString(a.control),
      lowSpacePercent: a['low-space'] as number,
      cbtBlockSize: parseSize(String(a['cbt-block-size']), 'cbt block size'),
      cbtKeepDeleted: a['cbt-keep-deleted'] as number,
      mergeSpeed: parseSize(String(a['merge-speed']), 'merge speed'),
      copyCache: parseSize(String(a['copy-cache']), 'copy cache'),
      exportName: optString(a['export-name']),
      fork: a.fork === true,
      exitWithParent: a['exit-with-parent'] === true,
      port: a.port === undefined ? undefined : parsePort(a.port),
      bind: String(a.bind),
      socket: optString(a.socket),
      readOnly: a['read-only'] === true,
      pidFile: optString(a['pid-file']),
      logLevel: a['log-level'] as LogLevel,
      tls: {
        mode: a.tls as TlsMode,
        certificates: optString(a['tls-certificates']),
        verifyPeer: a['tls-verify-peer'] === true,
        psk: optString(a['tls-psk']),
      },
      logFormat: a['log-format'] as LogFormat,
      metrics: optString(a.metrics),
      limits: serverLimits(a),
      remote: remoteSettings(a),
      shutdownTimeoutMs: shutdownTimeout(a),
    };
    const specs = checkServeOptions(opts);
    if (opts.fork && opts.exitWithParent) {
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        '--fork and --exit-with-parent conflict (a forked server has no parent left)',
      );
    }
    if (a.descriptions !== undefined && !fits({ kind: 'texts', describe: '' }, a.descriptions)) {
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        '"descriptions" goes in a --config file: {"descriptions": {"NAME": "TEXT"}}',
      );
    }
    opts.descriptions = exportDescriptions({
      specs,
      scanned: scanDescriptions(argv.slice(argv.indexOf('serve') + 1), arity, opts.images),
      config: a.descriptions,
    });
    // A description from --config alone (the command line had no -D): one image only.
    if (a.description !== undefined && Object.keys(opts.descriptions).length === 0) {
      if (specs.length > 1) {
        throw new NbdsnapError('BAD_ARGUMENT', 'with several images, describe each ("descriptions": {"NAME": "TEXT"})');
      }
      opts.descriptions = { [(specs[0] as ImageSpec).name]: String(a.description) };
    }
    if (opts.tls !== undefined) checkTlsSettings(opts.tls);
    if (opts.metrics !== undefined) parseMetricsAddress(opts.metrics); // a usage error, before anything opens
    return opts;
  },
  // The server's code loads when it runs (not for `serve --help` or a usage error).
  run: async (o) => (await import('./serve.ts')).serve(o),
});

/** --remote-timeout and --remote-connections, checked. */
function remoteSettings(a: ServeArgs): ServeOptions['remote'] {
  const timeout = a['remote-timeout'] as number;
  if (!Number.isFinite(timeout) || timeout <= 0) {
    throw new NbdsnapError('BAD_ARGUMENT', '--remote-timeout must be a number of seconds above 0');
  }
  const connections = a['remote-connections'] as number;
  if (!Number.isSafeInteger(connections) || connections < 1 || connections > 64) {
    throw new NbdsnapError('BAD_ARGUMENT', '--remote-connections must be a whole number from 1 to 64');
  }
  return { timeoutMs: Math.round(timeout * 1000), connections };
}

/** --shutdown-timeout, checked, in milliseconds. */
function shutdownTimeout(a: ServeArgs): number {
  const seconds = a['shutdown-timeout'] as number;
  if (!Number.isFinite(seconds) || seconds < 0) {
    throw new NbdsnapError('BAD_ARGUMENT', '--shutdown-timeout must be a number of seconds (0 for no limit)');
  }
  return Math.round(seconds * 1000);
}

/** --max-buffer, --handshake-timeout and --max-connections, checked. */
function serverLimits(a: ServeArgs): ServeOptions['limits'] {
  const maxBuffer = parseSize(String(a['max-buffer']), 'max buffer');
  if (maxBuffer < 1024 * 1024) throw new NbdsnapError('BAD_ARGUMENT', '--max-buffer must be at least 1M');
  const timeout = a['handshake-timeout'] as number;
  if (!Number.isFinite(timeout) || timeout < 0) {
    throw new NbdsnapError('BAD_ARGUMENT', '--handshake-timeout must be a number of seconds (0 for none)');
  }
  const maxConnections = a['max-connections'] as number;
  if (!Number.isSafeInteger(maxConnections) || maxConnections < 1) {
    throw new NbdsnapError('BAD_ARGUMENT', '--max-connections must be a whole number, at least 1');
  }
  return { maxBuffer, handshakeTimeoutMs: Math.round(timeout * 1000), maxConnections };
}

export const demoCommand = defineCommand({
  command: 'demo',
  describe: 'create a small demo image (if there is none) and serve it',
  builder: (y: Argv) =>
    y
      .option('dir', {
        type: 'string',
        describe: 'where the demo image lives [default: $TMPDIR/nbdsnap-demo-vN, N the store format]',
      })
      .option('port', { alias: 'p', type: 'string', default: '10809' })
      .option('log-level', { type: 'string', choices: LOG_LEVELS, default: 'warn' }),
  parse: (a) => ({ dir: a.dir, port: parsePort(a.port), logLevel: a['log-level'] as LogLevel }),
  run: async (o) => (await import('./demo.ts')).demo(o),
});
