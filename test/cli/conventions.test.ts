/**
 * The conventions users of qemu-nbd, nbdkit and every other Unix tool expect: `-h`/`--help` and
 * `-V`/`--version` on every command and subcommand (exit status 0), exit statuses 0/1/2, shell
 * completion, and a man page listing every option of every command.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import yargs from 'yargs';
import { commandPaths, helpText, manPage, parseHelp } from '../../src/cli/man.ts';
import { COMMAND_TABLE, commandWord, loadCommands, packageVersion, program } from '../../src/cli/program.ts';
import { run } from '../helpers/clients.ts';
import { CLI, ROOT } from '../helpers/server.ts';

const nbdsnap = (args: string[], env: Record<string, string> = {}) =>
  run(process.execPath, [CLI, ...args], { timeoutMs: 30_000, env, cwd: mkdtempSync(join(tmpdir(), 'nbdsnap-cwd-')) });

const VERSION = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version as string;
const COMMANDS = await loadCommands();
const PATHS = [[], ...(await commandPaths(COMMANDS))];

describe('help and version on every command', () => {
  const paths = PATHS;

  it('covers every command and subcommand', () => {
    const names = paths.map((p) => p.join(' '));
    for (const c of COMMANDS) {
      const name = c.command.split(' ')[0] as string;
      expect(names).toContain(name);
      for (const sub of c.commands ?? []) expect(names).toContain(`${name} ${sub.command.split(' ')[0]}`);
    }
    expect(names).toContain('snapshot create');
    expect(names).toContain('store format');
  });

  for (const path of paths) {
    it(`nbdsnap ${path.join(' ')} -h / --help / -V / --version`, async () => {
      const long = await helpText(path, '--help');
      expect(await helpText(path, '-h')).toBe(long);
      // The usage line names the command; the options include help and version.
      expect(long.split('\n')[0]).toContain(['nbdsnap', ...path].join(' '));
      expect(long).toMatch(/-h, --help/);
      expect(long).toMatch(/-V, --version/);
      expect((await helpText(path, '--version')).trim()).toBe(`nbdsnap ${VERSION}`);
      expect((await helpText(path, '-V')).trim()).toBe(`nbdsnap ${VERSION}`);
    });
  }

  it('packageVersion() reads package.json', () => {
    expect(packageVersion()).toBe(VERSION);
  });
});

describe('start-up: each command loads when named', () => {
  it('lists each command in --help as its module defines it', () => {
    expect(COMMAND_TABLE.map((e) => [e.command, e.describe])).toEqual(COMMANDS.map((c) => [c.command, c.describe]));
  });

  it('takes the first word that is no option as the command', () => {
    expect(commandWord(['--help'])).toBeUndefined();
    expect(commandWord(['-V', 'snapshot', 'list', '--json'])).toBe('snapshot');
    expect(commandWord(['--get-yargs-completions', 'store', ''])).toBe('store');
  });

  it('registers a stub for the commands not named, the full command for the one named', async () => {
    const commands = (y: Awaited<ReturnType<typeof program>>) =>
      (y as unknown as { getInternalMethods(): { getCommandInstance(): { getCommandHandlers(): object } } })
        .getInternalMethods()
        .getCommandInstance()
        .getCommandHandlers() as Record<string, { builder?: unknown; handler?: unknown }>;
    const named = commands(await program(['backup', '--help']));
    expect(Object.keys(named)).toEqual(expect.arrayContaining(COMMAND_TABLE.map((e) => e.command.split(' ')[0])));
    expect(typeof named.backup?.builder).toBe('function');
    expect(typeof named.serve?.builder).not.toBe('function');
  });
});

describe('as a process: output and exit status', () => {
  it('-V prints the version, exit 0', async () => {
    const r = await nbdsnap(['-V']);
    expect(r).toMatchObject({ code: 0, stdout: `nbdsnap ${VERSION}\n`, stderr: '' });
  });

  it('snapshot create -h prints its usage on stdout, exit 0', async () => {
    const r = await nbdsnap(['snapshot', 'create', '-h']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^nbdsnap snapshot create <devices> <name>/);
  });

  it('serve --version, exit 0', async () => {
    const r = await nbdsnap(['serve', '--version']);
    expect(r).toMatchObject({ code: 0, stdout: `nbdsnap ${VERSION}\n` });
  });

  it('exit 2 for an unknown option, a missing argument, no command', async () => {
    for (const args of [['serve', 'x=memory:1M', '--nope'], ['snapshot', 'create', 'disk'], [], ['store']]) {
      const r = await nbdsnap(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/^nbdsnap: error: .*\nnbdsnap: usage: .*--help\n$/);
      expect(r.stdout).toBe('');
    }
  });

  it('exit 1 for a runtime error (no server at the control socket)', async () => {
    const r = await nbdsnap(['status', '--control', join(tmpdir(), 'nbdsnap-no-such.sock')]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^nbdsnap: error: /);
  });
});

describe('shell completion', () => {
  it('prints a bash completion script', async () => {
    const r = await nbdsnap(['completion']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('###-begin-nbdsnap-completions-###');
    expect(r.stdout).toContain('complete -o bashdefault -o default -F _nbdsnap_yargs_completions nbdsnap');
  });

  it('completes commands and serve options', async () => {
    const commands = await nbdsnap(['--get-yargs-completions', '']);
    expect(commands.stdout.split('\n')).toEqual(expect.arrayContaining(['serve', 'snapshot', 'merge', 'completion']));
    const options = await nbdsnap(['--get-yargs-completions', 'serve', '--']);
    expect(options.stdout.split('\n')).toEqual(
      expect.arrayContaining(['--fork', '--exit-with-parent', '--export-name']),
    );
  });
});

describe('man page nbdsnap.1', () => {
  /** Every option a command defines, walked from its yargs builder (hidden ones left out). */
  function optionsOf(builder: NonNullable<(typeof COMMANDS)[number]['builder']>): string[] {
    const y = builder(yargs([]));
    const o = (y as unknown as { getOptions(): unknown }).getOptions() as {
      key: Record<string, unknown>;
      hiddenOptions: string[];
    };
    return Object.keys(o.key).filter((k) => !o.hiddenOptions.includes(k) && k !== 'help' && k !== 'version');
  }

  it('lists every option of every command, in that command section', async () => {
    const page = await manPage();
    const sections = page.split('\n.SS ');
    let checked = 0;
    for (const c of COMMANDS) {
      const name = c.command.split(' ')[0] as string;
      const leaves =
        c.commands === undefined ? [[name, c]] : c.commands.map((s) => [`${name} ${s.command.split(' ')[0]}`, s]);
      for (const [path, leaf] of leaves as [string, (typeof COMMANDS)[number]][]) {
        const section = sections.find((s) => s.startsWith(`nbdsnap ${path}`.replaceAll('-', '\\-')));
        expect(section, `a section for nbdsnap ${path}`).toBeDefined();
        for (const option of optionsOf(leaf.builder as NonNullable<typeof leaf.builder>)) {
          const bold = (n: string) => `\\fB${n.replaceAll('-', '\\-')}\\fR`;
          // An option as --name, an alias letter as -x, a positional as its name.
          const spelled = option.length === 1 ? `-${option}` : `--${option}`;
          const listed = section?.includes(bold(spelled)) === true || section?.includes(bold(option)) === true;
          expect(listed, `nbdsnap ${path}: ${option} in\n${section}`).toBe(true);
          checked += 1;
        }
      }
    }
    expect(checked).toBeGreaterThan(50);
    for (const head of ['.SH NAME', '.SH SYNOPSIS', '.SH "EXIT STATUS"', '.SH ENVIRONMENT'])
      expect(page).toContain(head);
  });

  it('is what --help says: the serve section holds each serve help line', async () => {
    const page = await manPage();
    const help = parseHelp(await helpText(['serve']));
    for (const e of help.sections.flatMap((s) => s.entries)) {
      if (e.names.startsWith('-h') || e.names.startsWith('-V')) continue;
      expect(page).toContain(e.text.replaceAll('\\', '\\e').replaceAll('-', '\\-'));
    }
  });

  it('renders without a troff warning (groff -ww)', async (ctx) => {
    if (spawnSync('sh', ['-c', 'command -v groff']).status !== 0) ctx.skip('groff is not installed');
    const r = await run('groff', ['-man', '-ww', '-z'], { input: await manPage() });
    expect(r, r.stderr).toMatchObject({ code: 0, stderr: '' });
  });

  it('is built into dist/ by npm run build', async () => {
    const r = await run(process.execPath, [join(ROOT, 'scripts/build.mjs')], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(ROOT, 'dist/nbdsnap.1'), 'utf8')).toBe(await manPage());
  });
});
