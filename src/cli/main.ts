/**
 * The `nbdsnap` command line. Each command lives in its own file; this one wires them to yargs
 * and turns any NbdsnapError into one clear line on stderr and a non-zero exit (2 for usage
 * errors), never a stack trace.
 */
import yargs from 'yargs';
import { NbdsnapError } from '../errors.ts';
import { LOG_LEVELS, type LogLevel } from '../log.ts';
import { parsePort, parseSize } from './args.ts';
import {
  backupBuilder,
  backupCommand,
  restoreBuilder,
  restoreCommand,
  verifyBuilder,
  verifyCommand,
} from './backup-command.ts';
import { cbtBuilder, cbtCommand } from './cbt-command.ts';
import { eventsCommand, snapshotCommand, statusCommand, storeCommand, withControl } from './control-commands.ts';
import { demo } from './demo.ts';
import { mergeBuilder, mergeCommand } from './merge-command.ts';
import { serve } from './serve.ts';

export async function main(argv: string[]): Promise<void> {
  try {
    await yargs(argv)
      .scriptName('nbdsnap')
      .usage('$0 <command> [options]')
      .command(
        'serve [images..]',
        'serve images (files or block devices) over NBD',
        (y) =>
          y
            .positional('images', {
              describe: 'PATH, NAME=PATH, or NAME=memory:SIZE; several may be given',
              type: 'string',
              array: true,
              default: [],
            })
            .option('export-name', { alias: 'x', type: 'string', describe: 'export name (one image only)' })
            .option('description', { alias: 'D', type: 'string', describe: 'export description' })
            .option('port', { alias: 'p', type: 'string', describe: 'TCP port [default: 10809]' })
            .option('bind', { alias: 'b', type: 'string', default: '127.0.0.1', describe: 'TCP address' })
            .option('socket', { alias: ['k', 'U'], type: 'string', describe: 'Unix socket path' })
            .option('read-only', { alias: 'r', type: 'boolean', default: false, describe: 'refuse writes' })
            .option('pid-file', { alias: 'P', type: 'string', describe: 'write the PID once serving' })
            .option('log-level', { type: 'string', choices: LOG_LEVELS, default: 'info' })
            .option('store', {
              type: 'string',
              array: true,
              describe: 'difference store range PATH[:START+COUNT] (sectors); repeatable',
            })
            .option('chunk-size', {
              type: 'string',
              describe: "copy-on-write chunk, 4K..1M [default: 64K, or the store's]",
            })
            .option('transient', {
              type: 'boolean',
              default: false,
              describe: 'keep snapshot maps in memory only (gone at exit)',
            })
            .option('control', { type: 'string', describe: 'control socket path (created mode 0600)' })
            .option('cbt-block-size', {
              type: 'string',
              default: '64K',
              describe: 'change-tracking block; 0 turns tracking off',
            })
            .option('low-space', { type: 'number', default: 10, describe: 'low-space event below this % free' })
            .config('config', 'JSON file with any of these options (images, store, ...)'),
        async (a) => {
          await serve({
            store: a.store?.map(String),
            chunkSize: a['chunk-size'] === undefined ? undefined : parseSize(String(a['chunk-size']), 'chunk size'),
            transient: a.transient,
            control: a.control,
            lowSpacePercent: a['low-space'],
            cbtBlockSize: parseSize(String(a['cbt-block-size']), 'cbt block size'),
            images: (a.images ?? []).map(String),
            exportName: a['export-name'],
            description: a.description,
            port: a.port === undefined ? undefined : parsePort(a.port),
            bind: a.bind,
            socket: a.socket,
            readOnly: a['read-only'],
            pidFile: a['pid-file'],
            logLevel: a['log-level'] as LogLevel,
          });
        },
      )
      .command(
        'demo',
        'create a small demo image (if there is none) and serve it',
        (y) =>
          y
            .option('dir', { type: 'string', describe: 'where the demo image lives [default: $TMPDIR/nbdsnap-demo]' })
            .option('port', { alias: 'p', type: 'string', default: '10809' })
            .option('log-level', { type: 'string', choices: LOG_LEVELS, default: 'warn' }),
        async (a) => {
          await demo({ dir: a.dir, port: Number(a.port), logLevel: a['log-level'] as LogLevel });
        },
      )
      .command('snapshot', 'create, list or delete snapshots of a running server', snapshotCommand)
      .command(
        'store',
        'format or check a store offline; append to, show or scrub the store of a running server',
        storeCommand,
      )
      .command(
        'merge <snapshot>',
        'roll DEVICE@SNAP back into its origin ("merge status" lists merges)',
        mergeBuilder,
        (a) => mergeCommand(a as never),
      )
      .command(
        'cbt <args..>',
        'changed ranges: cbt DEV@FROM [DEV@TO]; or cbt mark-dirty DEV OFFSET LENGTH',
        cbtBuilder,
        (a) => cbtCommand(a as never),
      )
      .command(
        'backup <source> <file>',
        'back up DEVICE@SNAP over NBD to FILE: full, or incremental with --since FROM',
        backupBuilder,
        (a) => backupCommand(a as never),
      )
      .command(
        'restore <args..>',
        'apply backups FILE... (full, then incrementals) to TARGET; or --undo JOURNAL TARGET',
        restoreBuilder,
        (a) => restoreCommand(a as never),
      )
      .command('verify <files..>', 'check backup files and their chain without restoring', verifyBuilder, (a) =>
        verifyCommand(a as never),
      )
      .command(
        'status',
        'show devices, snapshots and the store',
        (y) => withControl(y),
        (a) => statusCommand(a),
      )
      .command(
        'events',
        'stream events (one JSON object a line)',
        (y) => withControl(y),
        (a) => eventsCommand(a),
      )
      .demandCommand(1, 'name a command (try --help)')
      .strict()
      .fail((msg, err) => {
        throw err ?? new NbdsnapError('BAD_ARGUMENT', msg);
      })
      .help()
      .version(false)
      .parseAsync();
  } catch (err) {
    if (err instanceof NbdsnapError) {
      process.stderr.write(`nbdsnap: error: ${err.message}\n`);
      process.exit(err.code === 'BAD_ARGUMENT' || err.code === 'BAD_CONFIG' ? 2 : 1);
    }
    throw err;
  }
}
