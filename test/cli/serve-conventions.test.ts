/**
 * serve's conventions from qemu-nbd and nbdkit, with real servers and real clients: `-e NAME`,
 * a description per export that never reveals a server path (what nbdinfo --list shows),
 * `--fork` and `--exit-with-parent`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { CLIENT_ENV, ok, run, sparseImage } from '../helpers/clients.ts';
import { CLI, freshPort, tempDir } from '../helpers/server.ts';

const dir = tempDir();
afterAll(() => dir.cleanup());

/** Whether process `pid` exists. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Wait until `check()` holds, failing after 30 s (a deadline, not a measurement). */
async function until(what: string, check: () => boolean): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const pidIn = (file: string) => Number(readFileSync(file, 'utf8').trim());

/** Kill by PID at the end of the test, whatever happened. */
function killAtEnd(pid: () => number | undefined): void {
  onTestFinished(() => {
    const p = pid();
    if (p !== undefined && alive(p)) process.kill(p, 'SIGKILL');
  });
}

/**
 * `nbdsnap serve ARGS --fork`, its stderr (shared with the server) into a file; resolves when the
 * parent exits, with its status and stdout (read until the parent exits: the server holds none).
 */
async function forked(args: string[], name: string) {
  const errFile = join(dir.path, `${name}.err`);
  const fd = openSync(errFile, 'w');
  const child = spawn(process.execPath, [CLI, 'serve', ...args, '--fork'], { stdio: ['ignore', 'pipe', fd] });
  closeSync(fd);
  let stdout = '';
  child.stdout?.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  return { code, stdout, stderr: readFileSync(errFile, 'utf8') };
}

describe('export names and descriptions', () => {
  it('-e names the export; -D describes the image it follows; defaults show no path', async () => {
    const a = sparseImage(join(dir.path, 'a.img'), 1024 * 1024);
    const b = sparseImage(join(dir.path, 'b.img'), 1024 * 1024);
    const port = freshPort();
    const pidFile = join(dir.path, 'names.pid');
    const store = sparseImage(join(dir.path, 'store.img'), 16 * 1024 * 1024);
    const control = join(dir.path, 'names.ctl');
    killAtEnd(() => (existsSync(pidFile) ? pidIn(pidFile) : undefined));
    const args = [
      `first=${a}`,
      '-D',
      'the first disk',
      `second=${b}`,
      'third=memory:1M',
      '--description=the third disk',
      '-p',
      String(port),
      '--pid-file',
      pidFile,
      '--store',
      store,
      '--control',
      control,
    ];
    const r = await forked(args, 'names');
    expect(r.code, r.stderr).toBe(0);
    ok(await run(process.execPath, [CLI, 'snapshot', 'create', 'second', 'monday', '--control', control]), 'snapshot');

    const list = ok(await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]), 'nbdinfo --list --json');
    const exports = (JSON.parse(list) as { exports: { 'export-name': string; description?: string }[] }).exports;
    const described = Object.fromEntries(exports.map((e) => [e['export-name'], e.description]));
    expect(described).toMatchObject({
      first: 'the first disk',
      second: 'origin second',
      third: 'the third disk',
    });
    expect(described['second@monday']).toMatch(/^snapshot monday of second, taken /);
    // Nothing a client is shown, in either form, holds a path of the server's.
    const text = ok(await run('nbdinfo', ['--list', `nbd://127.0.0.1:${port}`]), 'nbdinfo --list');
    for (const shown of [list, text]) {
      expect(shown).not.toContain(dir.path);
      expect(shown).not.toContain('.img');
    }
    process.kill(pidIn(pidFile), 'SIGTERM');

    // -e is -x: one image, named.
    const port2 = freshPort();
    const pid2 = join(dir.path, 'e.pid');
    killAtEnd(() => (existsSync(pid2) ? pidIn(pid2) : undefined));
    expect((await forked([a, '-e', 'web', '-p', String(port2), '--pid-file', pid2, '-r'], 'e')).code).toBe(0);
    const one = ok(await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port2}`]), 'nbdinfo');
    expect(JSON.parse(one).exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual(['web']);
    expect(one).not.toContain(dir.path);
    process.kill(pidIn(pid2), 'SIGTERM');
  });
});

describe('--fork', () => {
  it('the parent exits 0 once the server accepts connections and its pid file is written', async () => {
    const port = freshPort();
    const pidFile = join(dir.path, 'fork.pid');
    killAtEnd(() => (existsSync(pidFile) ? pidIn(pidFile) : undefined));
    const r = await forked(['disk=memory:1M', '-p', String(port), '--pid-file', pidFile], 'fork');
    expect(r.code, r.stderr).toBe(0);
    // The lines a foreground server prints came from the parent, before it exited.
    expect(r.stdout).toContain(`nbdsnap: export "disk" at nbd://127.0.0.1:${port}/disk`);
    // The pid file was there when the parent exited, and names a live server (not the parent).
    const pid = pidIn(pidFile);
    expect(alive(pid)).toBe(true);
    const info = JSON.parse(ok(await run('nbdinfo', ['--json', `nbd://127.0.0.1:${port}/disk`]), 'nbdinfo'));
    expect(info.exports[0]['export-size']).toBe(1024 * 1024);
    // Detached: a session of its own.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    expect(Number(stat[3])).toBe(pid); // session id
    process.kill(pid, 'SIGTERM');
    await until('the forked server to stop', () => !alive(pid));
    expect(readFileSync(join(dir.path, 'fork.err'), 'utf8')).toContain('"msg":"stopped"');
  });

  it('the parent exits 1 with the error when the server cannot start', async () => {
    const port = freshPort();
    const r = await forked([`disk=${join(dir.path, 'missing.img')}`, '-p', String(port)], 'fork-fail');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^nbdsnap: error: cannot open .*missing\.img: no such file$/m);
    expect(r.stdout).toBe('');
  });

  it('a usage error is found before forking: exit 2', async () => {
    const r = await forked(['disk=memory:1M', '--exit-with-parent'], 'fork-usage');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^nbdsnap: error: --fork and --exit-with-parent conflict/);
  });
});

describe('--exit-with-parent', () => {
  it('stops when the process that started it exits; a server without it stays', async () => {
    const [p1, p2] = [freshPort(), freshPort()];
    const [pid1, pid2] = [join(dir.path, 'ewp1.pid'), join(dir.path, 'ewp2.pid')];
    const log = join(dir.path, 'ewp.err');
    killAtEnd(() => (existsSync(pid1) ? pidIn(pid1) : undefined));
    killAtEnd(() => (existsSync(pid2) ? pidIn(pid2) : undefined));
    // One parent (a shell) starts both servers, then waits.
    const serve = (port: number, pid: string, extra: string) =>
      `"${process.execPath}" "${CLI}" serve disk=memory:1M -p ${port} --pid-file ${pid} ${extra} &`;
    const parent: ChildProcess = spawn(
      'sh',
      ['-c', `${serve(p1, pid1, '--exit-with-parent')} ${serve(p2, pid2, '')} wait`],
      { env: CLIENT_ENV, stdio: ['ignore', 'ignore', openSync(log, 'w')] },
    );
    onTestFinished(() => {
      parent.kill('SIGKILL');
    });
    await until('both pid files', () => [pid1, pid2].every((f) => existsSync(f) && readFileSync(f, 'utf8') !== ''));
    const [watcher, stayer] = [pidIn(pid1), pidIn(pid2)];
    expect(Number(readFileSync(`/proc/${watcher}/stat`, 'utf8').split(') ')[1]?.split(' ')[1])).toBe(parent.pid);

    parent.kill('SIGKILL');
    await until('the --exit-with-parent server to stop', () => !alive(watcher));
    expect(readFileSync(log, 'utf8')).toContain('"msg":"parent exited: stopping"');
    // It stopped gracefully (its pid file's server said "stopped"), and the other still serves.
    expect(readFileSync(log, 'utf8')).toContain('"msg":"stopped"');
    expect(alive(stayer)).toBe(true);
    ok(await run('nbdinfo', ['--size', `nbd://127.0.0.1:${p2}/disk`]), 'nbdinfo on the server without the option');
    process.kill(stayer, 'SIGTERM');
    await until('the other server to stop', () => !alive(stayer));
  });
});
