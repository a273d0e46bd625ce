/**
 * The `nbdsnap` command line. Each command lives in its own file as a `Command` (command.ts);
 * this one hands them to yargs and turns every failure into what the user sees: one line
 * `nbdsnap: error: ...` on stderr, never a stack trace, and the exit status
 *   2  usage error: the command line or its --config file is wrong as written (unknown command
 *      or option, missing or extra argument, a value that does not parse); a usage line follows;
 *   1  runtime error: the command was understood but failed (a file missing or unwritable, the
 *      server unreachable or refusing, an I/O error).
 */
import yargs from 'yargs';
import { backupCommand, restoreCommand, verifyCommand } from './backup-command.ts';
import { cbtCommand } from './cbt-command.ts';
import { type Command, report, UsageFailure } from './command.ts';
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

/** yargs' usage of the command it failed in, e.g. [["$0 snapshot create <devices> <name>", ...]]. */
type UsageInstance = { getUsage(): [string, string][] };

export async function main(argv: string[]): Promise<void> {
  try {
    let y = yargs(argv).scriptName('nbdsnap').usage('$0 <command> [options]');
    for (const c of COMMANDS) y = c.register(y, []);
    await y
      .demandCommand(1, 'name a command')
      .strict()
      .fail((msg, err, usage) => {
        const line = (usage as unknown as UsageInstance).getUsage()[0]?.[0] ?? '$0 <command> [options]';
        throw new UsageFailure(yargsMessage(msg ?? err?.message ?? 'bad command line'), line.replace('$0', 'nbdsnap'));
      })
      .help()
      .version(false)
      .parseAsync();
  } catch (err) {
    const { lines, status } = report(err);
    process.stderr.write(`${lines.join('\n')}\n`);
    process.exit(status);
  }
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
