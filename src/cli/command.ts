/**
 * How every `nbdsnap` command is defined and how its failures reach the user.
 *
 * A command has two steps: `parse` turns the yargs arguments into checked options, touching
 * nothing (a failure there, like one of yargs' own, is a usage error: exit status 2, the error
 * line and a usage line), then `run` does the work (a failure is a runtime error: exit status 1,
 * the error line only). Either way the user gets `nbdsnap: error: ...` in one line, never a stack.
 */
import type { Argv } from 'yargs';
import { errorText } from '../error-text.ts';

export const EXIT_RUNTIME = 1;
export const EXIT_USAGE = 2;

/** A usage error: the command line (or its config file) is wrong as written. */
export class UsageFailure extends Error {
  /** The usage of the command concerned, e.g. "nbdsnap snapshot create <devices> <name>". */
  readonly usage: string;

  constructor(message: string, usage: string) {
    super(message);
    this.name = 'UsageFailure';
    this.usage = usage;
  }
}

/** A command ready for yargs; `group` commands (snapshot, store) hold subcommands. */
export interface Command {
  /** The yargs command string, e.g. "create <devices> <name>". */
  readonly command: string;
  readonly describe: string;
  /** A command's own options and positionals (what the man page and its test walk). */
  readonly builder?: (y: Argv) => Argv;
  /** A group's subcommands. */
  readonly commands?: Command[];
  /** `argv` is the whole command line, for a `parse` that needs the order of its arguments. */
  register(y: Argv, parents: string[], argv?: string[]): Argv;
}

export function defineCommand<A, O>(spec: {
  command: string;
  describe: string;
  builder: (y: Argv) => Argv<A>;
  /** Check the arguments (`argv`: the whole command line, in order); no side effects. */
  parse: (a: A, argv: string[]) => O;
  run: (o: O) => Promise<void>;
}): Command {
  return {
    command: spec.command,
    describe: spec.describe,
    builder: spec.builder as (y: Argv) => Argv,
    register: (y, parents, argv = []) =>
      y.command(spec.command, spec.describe, spec.builder as (y: Argv) => Argv, async (a) => {
        let options: O;
        try {
          options = spec.parse(a as A, argv);
        } catch (err) {
          throw new UsageFailure(errorText(err), ['nbdsnap', ...parents, spec.command].join(' '));
        }
        await spec.run(options);
      }),
  };
}

/** A command made of subcommands, e.g. `snapshot create|list|delete`. */
export function defineGroup(spec: { name: string; describe: string; commands: Command[] }): Command {
  return {
    command: spec.name,
    describe: spec.describe,
    commands: spec.commands,
    register: (y, parents, argv = []) =>
      y.command(spec.name, spec.describe, (sub: Argv) => {
        const names = spec.commands.map((c) => c.command.split(' ')[0]).join(', ');
        for (const c of spec.commands) c.register(sub, [...parents, spec.name], argv);
        return sub.demandCommand(1, `${spec.name}: name one of ${names}`);
      }),
  };
}

/** "nbdsnap snapshot create <devices> <name>" -> "nbdsnap snapshot create --help". */
export function helpCommand(usage: string): string {
  const words = usage.split(' ').filter((w) => w !== '' && !/^[<[]/.test(w));
  return `${words.join(' ')} --help`;
}

/** What to print (lines) and the exit status for an error that ended a command. */
export function report(err: unknown): { lines: string[]; status: number } {
  if (err instanceof UsageFailure) {
    return {
      lines: [`nbdsnap: error: ${err.message}`, `nbdsnap: usage: ${err.usage}; see ${helpCommand(err.usage)}`],
      status: EXIT_USAGE,
    };
  }
  const known =
    err instanceof Error && (err.name === 'NbdsnapError' || typeof (err as { syscall?: unknown }).syscall === 'string');
  if (known) return { lines: [`nbdsnap: error: ${errorText(err)}`], status: EXIT_RUNTIME };
  // Neither an error raised on purpose nor a system error: a defect. Where it happened is for a
  // bug report, on request.
  const lines = [`nbdsnap: error: internal error: ${errorText(err)} (NBDSNAP_DEBUG=1 shows where)`];
  if (process.env.NBDSNAP_DEBUG === '1' && err instanceof Error && err.stack !== undefined) lines.push(err.stack);
  return { lines, status: EXIT_RUNTIME };
}

/** The options of every command that talks to a running server. */
export const withControl = <T>(y: Argv<T>) =>
  y
    .option('control', { type: 'string', describe: 'control socket [default: $NBDSNAP_CONTROL]' })
    .option('json', { type: 'boolean', default: false, describe: 'print JSON' });
