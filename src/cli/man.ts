/**
 * The man page nbdsnap(1), rendered from the same yargs parser as `--help` (program.ts): for each
 * command and subcommand, its usage, description, positionals and options exactly as `--help`
 * prints them, plus the sections a man page has and `--help` lacks (exit status, environment,
 * files). scripts/build.mjs writes it to dist/nbdsnap.1 (npm links it as `man nbdsnap`).
 */
import type { Command } from './command.ts';
import { COMPLETION_COMMAND, loadCommands, packageVersion, program } from './program.ts';

/** Every command path with its own help: ["serve"], ["snapshot"], ["snapshot", "create"], ... */
export async function commandPaths(commands?: Command[]): Promise<string[][]> {
  const paths: string[][] = [];
  for (const c of commands ?? (await loadCommands())) {
    const name = c.command.split(' ')[0] as string;
    paths.push([name]);
    for (const sub of c.commands ?? []) paths.push([name, sub.command.split(' ')[0] as string]);
  }
  return [...paths, [COMPLETION_COMMAND]];
}

/** What `nbdsnap ARGS... FLAG` prints (FLAG: --help or another spelling), one option a line. */
export async function helpText(path: string[], flag = '--help'): Promise<string> {
  const y = (await program([...path, flag])).exitProcess(false).wrap(null);
  return new Promise((resolve, reject) => {
    void y.parse([...path, flag], {}, (err: Error | undefined, _argv: unknown, output: string) => {
      if (err) reject(err);
      else resolve(output);
    });
  });
}

export interface HelpEntry {
  /** "-x, --export-name, -e" or a positional's name. */
  names: string;
  text: string;
}

export interface ParsedHelp {
  usage: string;
  description: string;
  sections: { title: string; entries: HelpEntry[] }[];
}

/** yargs' help text -> usage line, description, and the entries of each section. */
export function parseHelp(help: string): ParsedHelp {
  const lines = help.split('\n');
  const usage = (lines.shift() ?? '').trim();
  const description: string[] = [];
  const sections: ParsedHelp['sections'] = [];
  for (const line of lines) {
    const title = /^(\S.*):$/.exec(line);
    if (title !== null) {
      sections.push({ title: title[1] as string, entries: [] });
    } else if (sections.length === 0) {
      if (line.trim() !== '') description.push(line.trim());
    } else if (/^\s+\S/.test(line)) {
      const m = /^\s+(\S.*?)(?:\s{2,}(.*))?$/.exec(line) as RegExpExecArray;
      (sections.at(-1) as { entries: HelpEntry[] }).entries.push({ names: m[1] as string, text: m[2] ?? '' });
    }
  }
  return { usage, description: description.join(' '), sections };
}

/** Text for troff: backslashes and hyphens escaped, no line starting with a control character. */
export function roff(text: string): string {
  return text
    .replaceAll('\\', '\\e')
    .replaceAll('-', '\\-')
    .replace(/^([.'])/gm, '\\&$1');
}

const bold = (names: string) =>
  names
    .split(', ')
    .map((n) => `\\fB${roff(n)}\\fR`)
    .join(', ');

const SHARED = new Set(['-h, --help', '-V, --version']);

function commandSection(path: string[], help: ParsedHelp): string[] {
  const out = [`.SS ${roff(help.usage)}`, roff(help.description)];
  for (const s of help.sections) {
    if (s.title === 'Commands') continue; // each subcommand has its own section
    const entries = s.entries.filter((e) => !SHARED.has(e.names));
    if (entries.length === 0) continue;
    out.push(`.PP\n${roff(s.title)}:`);
    for (const e of entries) out.push('.TP', bold(e.names), roff(e.text));
  }
  if (path.length === 1 && help.sections.some((s) => s.title === 'Commands')) {
    out.push('.PP', `Subcommands: ${roff(`nbdsnap ${path[0]} COMMAND --help`)} for each below.`);
  }
  return out;
}

export async function manPage(): Promise<string> {
  const top = parseHelp(await helpText([]));
  const out = [
    `.TH NBDSNAP 1 "" "nbdsnap ${roff(packageVersion())}" "User Commands"`,
    '.SH NAME',
    'nbdsnap \\- NBD server for block devices with copy\\-on\\-write point\\-in\\-time snapshots',
    '.SH SYNOPSIS',
    '.B nbdsnap',
    '.I command',
    '[\\fIoptions\\fR]',
    '.SH DESCRIPTION',
    'nbdsnap serves files and block devices over NBD. Each device',
    '.I DEV',
    'is served as its origin export',
    '.IR DEV ,',
    'and each of its snapshots as',
    '.IR DEV@SNAP ,',
    'a read\\-only point\\-in\\-time view kept by copy\\-on\\-write in a difference store.',
    'Any NBD client reads them: nbd\\-client, qemu\\-img, nbdcopy, nbdinfo, nbdfuse.',
    'Every command and subcommand takes',
    '\\fB\\-h\\fR, \\fB\\-\\-help\\fR (this text, for that command) and',
    '\\fB\\-V\\fR, \\fB\\-\\-version\\fR.',
    '.SH COMMANDS',
  ];
  for (const e of top.sections.find((s) => s.title === 'Commands')?.entries ?? []) {
    out.push('.TP', bold(e.names), roff(e.text));
  }
  out.push('.SH "COMMANDS IN DETAIL"');
  for (const path of await commandPaths()) out.push(...commandSection(path, parseHelp(await helpText(path))));
  out.push(
    '.SH "EXIT STATUS"',
    '.TP',
    '.B 0',
    'done (also \\fB\\-\\-help\\fR and \\fB\\-\\-version\\fR)',
    '.TP',
    '.B 1',
    'runtime error: the command was understood but failed (a file missing or unwritable, a port in use,',
    'the server unreachable or refusing, an I/O error); one line \\fBnbdsnap: error: ...\\fR on stderr',
    '.TP',
    '.B 2',
    'usage error: the command line or its \\fB\\-\\-config\\fR file is wrong as written; the error line',
    "and the command's usage",
    '.SH ENVIRONMENT',
    '.TP',
    '.B NBDSNAP_CONTROL',
    'the control socket of the running server, for commands that take \\fB\\-\\-control\\fR',
    '.TP',
    '.B NBDSNAP_DEBUG=1',
    'print the stack of an internal error',
    '.TP',
    '.BR LISTEN_FDS ", " LISTEN_PID',
    'systemd socket activation: \\fBserve\\fR listens on the sockets it is given instead of \\fB\\-p\\fR/\\fB\\-k\\fR',
    '.SH "SEE ALSO"',
    '.BR nbdinfo (1),',
    '.BR nbdcopy (1),',
    '.BR nbd\\-client (8),',
    '.BR qemu\\-nbd (8),',
    '.BR nbdkit (1)',
  );
  return `${out.join('\n')}\n`;
}
