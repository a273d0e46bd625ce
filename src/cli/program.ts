/**
 * The whole `nbdsnap` command line as one yargs parser: every command, the conventions every
 * command shares (`-h`/`--help`, `-V`/`--version`, strict options, usage errors), and shell
 * completion. main.ts runs it; man.ts renders the same parser's help as the man page, so
 * `--help` and `nbdsnap.1` cannot disagree.
 */
import { readFileSync } from 'node:fs';
import yargs, { type Argv } from 'yargs';
import { backupCommand, restoreCommand, verifyCommand } from './backup-command.ts';
import { cbtCommand } from './cbt-command.ts';
import { type Command, UsageFailure } from './command.ts';
import { eventsCommand, snapshotCommand, statusCommand, storeCommand } from './control-commands.ts';
import { mergeCommand } from './merge-command.ts';
import { demoCommand, serveCommand } from './serve-command.ts';

export const COMMANDS: Command[] = [
  serveCommand,
  demoCommand,
  snapshotCommand,
  storeCommand,
  mergeCommand,
  cbtCommand,
  backupCommand,
  restoreCommand,
  verifyCommand,
  statusCommand,
  eventsCommand,
];

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

/** The parser for `nbdsnap ARGV...`; a usage error is thrown as UsageFailure (exit status 2). */
export function program(argv: string[]): Argv {
  let y = yargs(argv).scriptName('nbdsnap').usage('$0 <command> [options]');
  for (const c of COMMANDS) y = c.register(y, [], argv);
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
