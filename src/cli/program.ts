/**
 * The whole `nbdsnap` command line as one yargs parser: every command, the conventions every
 * command shares (`-h`/`--help`, `-V`/`--version`, strict options, usage errors), and shell
 * completion. main.ts runs it; man.ts renders the same parser's help as the man page, so
 * `--help` and `nbdsnap.1` cannot disagree.
 *
 * Start-up: a command's module (and the code it runs: the server, the backup engine, the store)
 * is loaded only when that command is named. `nbdsnap --help` and `--version` load none; every
 * other command is listed from COMMAND_TABLE, its usage and description as its module defines
 * them (test/cli/conventions.test.ts checks that they agree).
 */
import { readFileSync } from 'node:fs';
import yargs, { type Argv } from 'yargs';
import { type Command, UsageFailure } from './command.ts';

/** A top-level command before its module is loaded: what `nbdsnap --help` lists, and the loader. */
export interface CommandEntry {
  /** The yargs command string, as the module's Command has it. */
  readonly command: string;
  readonly describe: string;
  readonly load: () => Promise<Command>;
}

export const COMMAND_TABLE: CommandEntry[] = [
  {
    command: 'serve [images..]',
    describe: 'serve images (files or block devices) over NBD',
    load: async () => (await import('./serve-command.ts')).serveCommand,
  },
  {
    command: 'demo',
    describe: 'create a small demo image (if there is none) and serve it',
    load: async () => (await import('./serve-command.ts')).demoCommand,
  },
  {
    command: 'snapshot',
    describe: 'create, list or delete snapshots of a running server',
    load: async () => (await import('./control-commands.ts')).snapshotCommand,
  },
  {
    command: 'store',
    describe: 'format a store offline; append to or show the store of a running server',
    load: async () => (await import('./control-commands.ts')).storeCommand,
  },
  {
    command: 'merge <snapshot> [args..]',
    describe: 'roll DEVICE@SNAP back into its origin ("merge status" lists merges, "merge speed DEVICE@SNAP SPEED")',
    load: async () => (await import('./merge-command.ts')).mergeCommand,
  },
  {
    command: 'cbt <args..>',
    describe:
      'changed ranges: cbt DEV@FROM [DEV@TO]; or cbt mark-dirty DEV OFFSET LENGTH | points DEV | forget DEV NAME',
    load: async () => (await import('./cbt-command.ts')).cbtCommand,
  },
  {
    command: 'backup <source> <file>',
    describe: 'back up DEVICE@SNAP over NBD to FILE: full, or incremental with --since FROM',
    load: async () => (await import('./backup-command.ts')).backupCommand,
  },
  {
    command: 'restore <args..>',
    describe: 'apply backups FILE... (full, then incrementals) to TARGET; or --undo JOURNAL TARGET',
    load: async () => (await import('./backup-command.ts')).restoreCommand,
  },
  {
    command: 'verify <files..>',
    describe: 'check backup files and their chain without restoring',
    load: async () => (await import('./backup-command.ts')).verifyCommand,
  },
  {
    command: 'status',
    describe: 'show devices, snapshots and the store',
    load: async () => (await import('./control-commands.ts')).statusCommand,
  },
  {
    command: 'events',
    describe: 'stream events (one JSON object a line) until the server stops',
    load: async () => (await import('./control-commands.ts')).eventsCommand,
  },
];

/** Every top-level command, loaded (the man page, the tests). */
export function loadCommands(): Promise<Command[]> {
  return Promise.all(COMMAND_TABLE.map((e) => e.load()));
}

const nameOf = (command: string): string => command.split(' ')[0] as string;

/**
 * The command ARGV names: its first word that is not an option. No option before the command
 * takes a value (--help, --version, and completion's --get-yargs-completions are flags).
 */
export function commandWord(argv: string[]): string | undefined {
  return argv.find((a) => !a.startsWith('-'));
}

/** The package's version, from the package.json beside the sources (src/cli/) or the bundle (dist/). */
export function packageVersion(): string {
  for (const rel of ['../../package.json', '../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'nbdsnap' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // try the next place
    }
  }
  return 'unknown';
}

/** yargs' usage of the command it failed in, e.g. [["$0 snapshot create <devices> <name>", ...]]. */
type UsageInstance = { getUsage(): [string, string][] };

export const COMPLETION_COMMAND = 'completion';

/** yargs takes the script's name and command, which its types leave out. */
type CompletionScript = { showCompletionScript(name: string, command: string): void };

/**
 * The parser for `nbdsnap ARGV...`; a usage error is thrown as UsageFailure (exit status 2).
 * Only the command ARGV names is loaded (every command with `all`: the man page); the others are
 * registered by usage and description, enough for `--help`, completion and "Unknown argument".
 */
export async function program(argv: string[], all = false): Promise<Argv> {
  const word = commandWord(argv);
  let y = yargs(argv).scriptName('nbdsnap').usage('$0 <command> [options]');
  for (const e of COMMAND_TABLE) {
    if (all || nameOf(e.command) === word) y = (await e.load()).register(y, [], argv);
    else y = y.command(e.command, e.describe);
  }
  return (
    y
      // Answers the completion script's --get-yargs-completions; the script is printed by the
      // `completion` command below (a command of its own, so that it has --help like the others).
      .completion('__completion', false)
      .command(
        COMPLETION_COMMAND,
        'print a bash completion script: nbdsnap completion >> ~/.bashrc',
        (c: Argv) => c,
        () => (y as unknown as CompletionScript).showCompletionScript('nbdsnap', COMPLETION_COMMAND),
      )
      .demandCommand(1, 'name a command')
      .strict()
      .fail((msg, err, usage) => {
        const line = (usage as unknown as UsageInstance).getUsage()[0]?.[0] ?? '$0 <command> [options]';
        throw new UsageFailure(yargsMessage(msg ?? err?.message ?? 'bad command line'), line.replace('$0', 'nbdsnap'));
      })
      .help('help', 'show help')
      .alias('help', 'h')
      .version('version', 'show the version', `nbdsnap ${packageVersion()}`)
      .alias('version', 'V')
      .epilogue('Exit status: 0 done, 1 runtime error, 2 usage error. See nbdsnap(1).')
  );
}

/** yargs' messages in one line: its "Invalid values:" text spans several. */
export function yargsMessage(msg: string): string {
  const choice = /^Invalid values:\s*Argument: ([^,]+), Given: (.*), Choices: (.*)$/s.exec(msg.trim());
  if (choice !== null) {
    const [, arg, given, choices] = choice as unknown as [string, string, string, string];
    const flag = arg.length === 1 ? `-${arg}` : `--${arg}`;
    return `${flag} ${given.trim()} is not one of ${choices.replaceAll('"', '').trim()}`;
  }
  if (/^Invalid JSON config file: true$/.test(msg)) return '--config needs a FILE';
  return msg.replace(/\s*\n\s*/g, ' ').trim();
}
