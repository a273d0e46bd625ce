/**
 * The `nbdsnap` command line (program.ts builds the parser). This turns every failure into what
 * the user sees: one line `nbdsnap: error: ...` on stderr, never a stack trace, and the exit status
 *   0  done (`--help`, `--version` and `completion` too);
 *   1  runtime error: the command was understood but failed (a file missing or unwritable, the
 *      server unreachable or refusing, an I/O error);
 *   2  usage error: the command line or its --config file is wrong as written (unknown command
 *      or option, missing or extra argument, a value that does not parse); a usage line follows.
 */
import { report } from './command.ts';
import { program } from './program.ts';

export { manPage } from './man.ts';
export { yargsMessage } from './program.ts';

export async function main(argv: string[]): Promise<void> {
  try {
    await (await program(argv)).parseAsync();
  } catch (err) {
    const { lines, status } = report(err);
    process.stderr.write(`${lines.join('\n')}\n`);
    process.exit(status);
  }
}
