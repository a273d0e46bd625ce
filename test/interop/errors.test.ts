/**
 * Errors a user can act on, through the real CLI (bin/nbdsnap.cjs), no server needed:
 * - every command's usage errors (yargs' own: an unknown option, a missing argument; and ours:
 *   a backup URL without a scheme, a --config file missing, not JSON, with an unknown or a
 *   wrongly typed key) exit 2 with exactly the error line and the command's usage line;
 * - every command's runtime errors (no server behind the control socket, a missing file, a
 *   store or image that cannot be opened for writing: EPERM from an immutable file, EROFS from a
 *   read-only bind mount) exit 1 with exactly one line;
 * - never a stack frame.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { run, sparseImage } from '../helpers/clients.ts';
import { CLI, freshPort, tempDir } from '../helpers/server.ts';

const dir = tempDir('nbdsnap-errors-');
const image = sparseImage(join(dir.path, 'disk.img'), 4 * 1024 * 1024);
const nowhere = join(dir.path, 'no-server.sock');
const immutable: string[] = [];
const mounts: string[] = [];
afterAll(() => {
  for (const f of immutable) execFileSync('chattr', ['-i', f]);
  for (const m of mounts) execFileSync('umount', [m]);
  dir.cleanup();
});

/** `nbdsnap ARGS` to completion, without $NBDSNAP_CONTROL: exit status and stderr lines. */
async function nbdsnap(args: string[]) {
  const r = await run(process.execPath, [CLI, ...args], { timeoutMs: 30_000, env: { NBDSNAP_CONTROL: undefined } });
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  for (const l of lines) expect(l, r.stderr).not.toMatch(/^\s+at |\bat .*\.[cm]?[tj]s:\d+|Error:/);
  return { code: r.code, lines, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Exit 2, the error line, then "nbdsnap: usage: nbdsnap COMMAND ...; see nbdsnap COMMAND --help"
 * (COMMAND '' for the top level).
 */
async function expectUsageError(args: string[], error: RegExp | string, command: string) {
  const r = await nbdsnap(args);
  expect(r.code, r.stderr).toBe(2);
  expect(r.lines, r.stderr).toHaveLength(2);
  if (typeof error === 'string') expect(r.lines[0]).toBe(`nbdsnap: error: ${error}`);
  else expect(r.lines[0]).toMatch(error);
  const usage =
    command === ''
      ? /^nbdsnap: usage: nbdsnap <command> \[options\]; see nbdsnap --help$/
      : new RegExp(`^nbdsnap: usage: nbdsnap ${command}\\b.*; see nbdsnap ${command} --help$`);
  expect(r.lines[1]).toMatch(usage);
  expect(r.stdout).toBe('');
}

/** Exit 1 and exactly this one line. */
async function expectRuntimeError(args: string[], error: RegExp | string) {
  const r = await nbdsnap(args);
  expect(r.code, r.stderr).toBe(1);
  expect(r.lines, r.stderr).toHaveLength(1);
  if (typeof error === 'string') expect(r.lines[0]).toBe(`nbdsnap: error: ${error}`);
  else expect(r.lines[0]).toMatch(error);
}

const ctl = ['--control', nowhere];
/** Each command (its words), arguments it accepts, and the arguments it cannot do without. */
const COMMANDS: { words: string[]; valid: string[]; needs?: string }[] = [
  { words: ['serve'], valid: [`disk=${image}`, '-p', '0'] },
  { words: ['demo'], valid: ['-p', '0'] },
  { words: ['snapshot', 'create'], valid: ['disk', 's1', ...ctl], needs: 'at least 2' },
  { words: ['snapshot', 'list'], valid: ctl },
  { words: ['snapshot', 'delete'], valid: ['disk@s1', ...ctl], needs: 'at least 1' },
  { words: ['store', 'append'], valid: [image, ...ctl], needs: 'at least 1' },
  { words: ['store', 'status'], valid: ctl },
  { words: ['merge'], valid: ['disk@s1', ...ctl], needs: 'at least 1' },
  { words: ['status'], valid: ctl },
  { words: ['events'], valid: ctl },
  { words: ['cbt'], valid: ['disk@s1', ...ctl], needs: 'at least 1' },
  { words: ['backup'], valid: ['nbd://127.0.0.1:1/disk@s1', join(dir.path, 'x.nbk')], needs: 'at least 2' },
  { words: ['restore'], valid: [join(dir.path, 'x.nbk'), join(dir.path, 'target.img')], needs: 'at least 1' },
  { words: ['verify'], valid: [join(dir.path, 'x.nbk')], needs: 'at least 1' },
];

describe('usage errors: exit 2, the error and the usage line', () => {
  for (const c of COMMANDS) {
    const name = c.words.join(' ');
    it(`${name}: an unknown option`, async () => {
      await expectUsageError([...c.words, ...c.valid, '--frobnicate'], 'Unknown argument: frobnicate', name);
    });
    if (c.needs !== undefined) {
      it(`${name}: a missing argument`, async () => {
        await expectUsageError(c.words, `Not enough non-option arguments: got 0, need ${c.needs}`, name);
      });
    }
  }

  it('snapshot and store without a subcommand, and no command at all', async () => {
    await expectUsageError(['snapshot'], 'snapshot: name one of create, list, delete', 'snapshot');
    await expectUsageError(['store'], /^nbdsnap: error: store: name one of append, status\b/, 'store');
    await expectUsageError([], 'name a command', '');
  });

  it('a control command with no control socket named', async () => {
    await expectUsageError(['status'], 'no control socket: pass --control PATH or set NBDSNAP_CONTROL', 'status');
  });

  it('a backup URL without a scheme, or not naming a snapshot', async () => {
    const out = join(dir.path, 'out.nbk');
    await expectUsageError(
      ['backup', 'host:10809/disk@s', out],
      'backup source host:10809/disk@s is not an nbd:// URI: did you mean nbd://host:10809/disk@s?',
      'backup',
    );
    await expectUsageError(
      ['backup', 'disk@s', out],
      'backup source disk@s is not an nbd:// URI: give nbd://HOST:PORT/DEVICE@SNAP',
      'backup',
    );
    await expectUsageError(
      ['backup', 'nbd://127.0.0.1:10809/disk', out],
      'nbd://127.0.0.1:10809/disk does not name a snapshot: give nbd://HOST:PORT/DEVICE@SNAP',
      'backup',
    );
  });

  it('values that do not parse', async () => {
    await expectUsageError(['serve', image, '--low-space', '200'], /--low-space "200" must be a percentage/, 'serve');
    await expectUsageError(['cbt', 'mark-dirty', 'disk', 'lots', '1', ...ctl], /offset "lots" is not a size/, 'cbt');
    await expectUsageError(['restore', join(dir.path, 'x.nbk')], 'restore needs FILE... TARGET', 'restore');
    await expectUsageError(
      ['serve', image, '--log-level', 'loud'],
      '--log-level "loud" is not one of silent, error, warn, info, debug, trace',
      'serve',
    );
  });

  it('options given without their value (never served without them)', async () => {
    await expectUsageError(['serve', image, '-p'], '--port needs a value', 'serve');
    await expectUsageError(['serve', image, '-p', '1', '--store'], '--store needs a value', 'serve');
    await expectUsageError(['serve', image, '-p', '1', '--control'], '--control needs a value', 'serve');
    await expectUsageError(['serve', image, '-p', '1', '--config'], '--config needs a FILE', 'serve');
  });
});

describe('--config files: exit 2, one line naming the file and what is wrong', () => {
  const config = (name: string, text: string) => {
    const path = join(dir.path, name);
    writeFileSync(path, text);
    return path;
  };
  const serve = (path: string) => ['serve', '--config', path, '-p', String(freshPort())];

  it('a missing file', async () => {
    const path = join(dir.path, 'missing.json');
    await expectUsageError(serve(path), `cannot read config file ${path}: no such file or directory (ENOENT)`, 'serve');
  });

  it('not JSON, or not an object', async () => {
    const bad = config('bad.json', '{"images": [');
    await expectUsageError(serve(bad), new RegExp(`^nbdsnap: error: config file ${bad} is not valid JSON: `), 'serve');
    const list = config('list.json', '["disk.img"]');
    await expectUsageError(serve(list), /^nbdsnap: error: config file .*list\.json must hold a JSON object/, 'serve');
  });

  it('an unknown key', async () => {
    const path = config('unknown.json', JSON.stringify({ images: [image], frobnicate: 1 }));
    await expectUsageError(serve(path), `config file ${path}: unknown option "frobnicate"`, 'serve');
  });

  it('wrongly typed keys', async () => {
    const cases: [Record<string, unknown>, string | RegExp][] = [
      [{ images: [image], port: [1] }, '"port" must be a number or a string such as "64K", not a list'],
      [{ images: 'x', store: [1] }, '"store" must be a string or a list of strings, not a list'],
      [{ images: [image], 'read-only': 'yes' }, '"read-only" must be true or false, not string "yes"'],
      [{ images: [image], readOnly: 1 }, '"readOnly" must be true or false, not number 1 (option read-only)'],
      [{ images: [image], 'log-level': 'loud' }, /"log-level" must be one of .*info.*, not string "loud"/],
      [{ images: [image], lowSpace: '5' }, '"lowSpace" must be a number, not string "5" (option low-space)'],
    ];
    for (const [i, [content, why]] of cases.entries()) {
      const path = config(`typed-${i}.json`, JSON.stringify(content));
      const want = typeof why === 'string' ? `config file ${path}: ${why}` : why;
      await expectUsageError(serve(path), want, 'serve');
    }
  });

  it("a good one is checked with the command line (-x and the config's image)", async () => {
    const path = config('good.json', JSON.stringify({ images: [`disk=${image}`, `other=${image}`], port: 1 }));
    await expectUsageError(
      ['serve', '--config', path, '-p', String(freshPort()), '-x', 'name'],
      '-x names one export; with several images use NAME=PATH',
      'serve',
    );
  });
});

describe('runtime errors: exit 1, one line', () => {
  const unreachable = `cannot reach control socket ${nowhere}: is nbdsnap serve running with --control?`;
  for (const c of COMMANDS.filter((x) => x.valid.includes(nowhere))) {
    it(`${c.words.join(' ')}: no server behind the control socket`, async () => {
      await expectRuntimeError([...c.words, ...c.valid], unreachable);
    });
  }

  it('serve: an image that does not exist, a directory as image', async () => {
    const missing = join(dir.path, 'missing.img');
    await expectRuntimeError(
      ['serve', `disk=${missing}`, '-p', String(freshPort())],
      `cannot open ${missing}: no such file`,
    );
    await expectRuntimeError(
      ['serve', `d=${dir.path}`, '-p', String(freshPort())],
      `cannot open ${dir.path}: it is a directory`,
    );
  });

  it('backup, restore, verify, demo: what they need is not there', async () => {
    await expectRuntimeError(
      ['backup', 'nbd://127.0.0.1:1/disk@s1', join(dir.path, 'y.nbk'), '--progress=none'],
      /^nbdsnap: error: nbd:\/\/127\.0\.0\.1:1\/disk@s1: cannot connect: .*ECONNREFUSED/,
    );
    const missing = join(dir.path, 'missing.nbk');
    await expectRuntimeError(
      ['restore', missing, join(dir.path, 't.img'), '--progress=none'],
      `${missing}: no such file`,
    );
    await expectRuntimeError(['verify', missing], `${missing}: no such file`);
    await expectRuntimeError(
      ['demo', '--dir', image, '-p', String(freshPort())],
      `cannot create directory ${image}: file already exists (EEXIST)`,
    );
  });

  // Root ignores file modes, so an immutable file (chattr +i) is what refuses writes here.
  const chattr = (() => {
    const probe = sparseImage(join(dir.path, 'probe.img'), 4096);
    try {
      execFileSync('chattr', ['+i', probe], { stdio: 'ignore' });
      execFileSync('chattr', ['-i', probe], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  })();
  const why = 'chattr +i is not supported here (no immutable files to refuse writes as root)';
  if (!chattr && process.env.CI === 'true') throw new Error(why);

  it.skipIf(!chattr)('serve: a store or an image that cannot be opened for writing (EPERM)', async () => {
    const store = sparseImage(join(dir.path, 'locked-store.img'), 16 * 1024 * 1024);
    const origin = sparseImage(join(dir.path, 'locked-disk.img'), 4 * 1024 * 1024);
    for (const f of [store, origin]) {
      execFileSync('chattr', ['+i', f]);
      immutable.push(f);
    }
    await expectRuntimeError(
      ['serve', `disk=${image}`, '--store', store, '-p', String(freshPort())],
      new RegExp(`^nbdsnap: error: .*${store}: operation not permitted \\(EPERM\\)$`),
    );
    await expectRuntimeError(
      ['serve', `disk=${origin}`, '-p', String(freshPort())],
      `cannot open ${origin}: operation not permitted (EPERM)`,
    );
  });

  it('serve: a store on a read-only file system (EROFS)', async (ctx) => {
    const rw = join(dir.path, 'rw');
    const ro = join(dir.path, 'ro');
    mkdirSync(rw);
    mkdirSync(ro);
    sparseImage(join(rw, 'store.img'), 16 * 1024 * 1024);
    try {
      execFileSync('mount', ['--bind', rw, ro], { stdio: 'ignore' });
      mounts.push(ro);
      execFileSync('mount', ['-o', 'remount,ro,bind', ro], { stdio: 'ignore' });
    } catch {
      if (process.env.CI === 'true') throw new Error('a read-only bind mount is needed here (run as root)');
      ctx.skip('no read-only bind mount here (needs root)');
    }
    const store = join(ro, 'store.img');
    await expectRuntimeError(
      ['serve', `disk=${image}`, '--store', store, '-p', String(freshPort())],
      `cannot open ${store}: read-only file system (EROFS)`,
    );
  });
});
