/**
 * nbdsnap as an installed command and a system service, and the suite's own setup:
 *   - `npm pack` makes a tarball that `npm install -g` installs; `nbdsnap` then runs from any
 *     folder with no TypeScript toolchain (no tsx, no esbuild), its man page linked;
 *   - the example systemd units pass `systemd-analyze verify`;
 *   - `npm run setup` installs missing packages as root, and otherwise prints the apt-get line
 *     and fails (NBDSNAP_TEST_ALLOW_MISSING=1 goes on).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { aptLine, missingMessage, missingPackages, PACKAGES } from '../../scripts/requirements.mjs';
import { background, ok, run } from '../helpers/clients.ts';
import { CLI, freshPort, ROOT, tempDir } from '../helpers/server.ts';

const dir = tempDir();
afterAll(() => dir.cleanup());

const VERSION = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version as string;

describe('npm pack, then npm install -g', () => {
  it('installs a command that runs from any folder without tsx or esbuild', async () => {
    const packed = await run('npm', ['pack', '--pack-destination', dir.path], { cwd: ROOT, timeoutMs: 300_000 });
    ok(packed, 'npm pack');
    const tarball = readdirSync(dir.path).find((f) => /^nbdsnap-.*\.tgz$/.test(f));
    expect(tarball).toBeDefined();
    const list = ok(await run('tar', ['-tzf', join(dir.path, tarball as string)]), 'tar -t');
    // The bundle and man page ship; no TypeScript does.
    expect(list).toContain('package/dist/nbdsnap.mjs');
    expect(list).toContain('package/dist/nbdsnap.1');
    expect(list).toContain('package/contrib/systemd/nbdsnap.service');
    expect(list).not.toMatch(/\.ts$/m);

    // From the npm cache where it can (yargs is there after npm ci), the registry otherwise.
    const prefix = join(dir.path, 'prefix');
    const install = await run(
      'npm',
      [
        'install',
        '-g',
        '--prefix',
        prefix,
        '--prefer-offline',
        '--no-audit',
        '--no-fund',
        join(dir.path, tarball as string),
      ],
      { cwd: dir.path, timeoutMs: 300_000 },
    );
    ok(install, 'npm install -g');
    const pkg = join(prefix, 'lib/node_modules/nbdsnap');
    for (const dev of ['tsx', 'esbuild', 'typescript', 'vitest', 'lru-cache']) {
      expect(existsSync(join(pkg, 'node_modules', dev)), `${dev} installed`).toBe(false);
    }
    expect(existsSync(join(prefix, 'share/man/man1/nbdsnap.1'))).toBe(true);

    // From another folder, with only the prefix and the system on PATH.
    const env = { PATH: `${join(prefix, 'bin')}:/usr/bin:/bin`, NODE_PATH: undefined };
    const version = await run('nbdsnap', ['--version'], { cwd: dir.path, env });
    expect(version, version.stderr).toMatchObject({ code: 0, stdout: `nbdsnap ${VERSION}\n` });
    const help = await run('nbdsnap', ['serve', '--help'], { cwd: dir.path, env });
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('--fork');
    // The native helper was built at install by node-gyp (the package degrades without it).
    if (!existsSync(join(pkg, 'build/Release/fsx.node'))) {
      expect(install.stdout + install.stderr).toContain('nbdsnap: native helper not built');
    }
  });
});

describe('systemd units', () => {
  const analyze = spawnSync('sh', ['-c', 'command -v systemd-analyze']).status === 0;
  it('pass systemd-analyze verify', async (ctx) => {
    if (!analyze) ctx.skip('systemd-analyze is not installed (Debian package systemd)');
    const units = join(ROOT, 'contrib/systemd');
    // verify checks that ExecStart's program exists: point it at this checkout's launcher.
    const service = readFileSync(join(units, 'nbdsnap.service'), 'utf8');
    expect(service).toContain('ExecStart=/usr/local/bin/nbdsnap serve');
    writeFileSync(join(dir.path, 'nbdsnap.service'), service.replace('/usr/local/bin/nbdsnap', CLI));
    writeFileSync(join(dir.path, 'nbdsnap.socket'), readFileSync(join(units, 'nbdsnap.socket')));
    const r = await run('systemd-analyze', [
      'verify',
      '--man=no',
      join(dir.path, 'nbdsnap.socket'),
      join(dir.path, 'nbdsnap.service'),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    // And it does complain about a broken unit.
    writeFileSync(join(dir.path, 'broken.service'), '[Service]\nExecStart=/nonexistent/nbdsnap\nBogus=1\n');
    const broken = await run('systemd-analyze', ['verify', '--man=no', join(dir.path, 'broken.service')]);
    expect(broken.stderr).toContain("Unknown key 'Bogus'");
  });
});

describe('the service, socket-activated', () => {
  const activate = spawnSync('sh', ['-c', 'command -v systemd-socket-activate']).status === 0;
  it("runs the unit's ExecStart on the socket systemd passes (systemd-socket-activate)", async (ctx) => {
    if (!activate) ctx.skip('systemd-socket-activate is not installed (Debian package systemd)');
    const service = readFileSync(join(ROOT, 'contrib/systemd/nbdsnap.service'), 'utf8');
    const exec = /^ExecStart=(.*)$/m.exec(service)?.[1] ?? '';
    const config = join(dir.path, 'config.json');
    const control = join(dir.path, 'control.sock');
    writeFileSync(config, JSON.stringify({ images: ['disk=memory:1M'], descriptions: { disk: 'unit disk' } }));
    const argv = exec
      .replace('/etc/nbdsnap/config.json', config)
      .replace('/run/nbdsnap/control.sock', control)
      .split(' ');
    expect(argv[0]).toBe('/usr/local/bin/nbdsnap');
    const port = freshPort();
    const activator = background('systemd-socket-activate', [
      '-l',
      `127.0.0.1:${port}`,
      process.execPath,
      CLI,
      ...argv.slice(1),
    ]);
    onTestFinished(() => activator.kill('SIGKILL'));
    // The first connection starts the server (it may take a few tries while the activator binds).
    let list = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
    for (let i = 0; i < 100 && list.code !== 0; i += 1) {
      await new Promise((r) => setTimeout(r, 100));
      list = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
    }
    const exports = JSON.parse(ok(list, 'nbdinfo --list')).exports as { 'export-name': string; description: string }[];
    expect(exports).toEqual([expect.objectContaining({ 'export-name': 'disk', description: 'unit disk' })]);
    ok(await run(process.execPath, [CLI, 'status', '--control', control]), 'status over the control socket');
    // systemctl stop: SIGTERM to the main process (the activator exec'd the server), a clean exit.
    activator.kill('SIGTERM');
    expect(await activator.exited, activator.output()).toBe(0);
  });
});

describe('npm run setup', () => {
  const setup = (env: Record<string, string>) =>
    run(process.execPath, [join(ROOT, 'scripts/setup.mjs'), '--dry-run'], { cwd: ROOT, env });

  it('knows a tool for every package .ci/run used to install', () => {
    const names = PACKAGES.map((p) => p.name);
    for (const p of ['qemu-utils', 'libnbd-bin', 'python3-libnbd', 'nbdkit', 'fio', 'fuse3', 'e2fsprogs']) {
      expect(names).toContain(p);
    }
    for (const p of ['util-linux', 'nbd-client', 'qemu-system-x86', 'busybox-static', 'cpio'])
      expect(names).toContain(p);
    expect(missingPackages((tool) => tool !== 'nbdsh' && tool !== 'cpio')).toEqual(['python3-libnbd', 'cpio']);
    expect(aptLine(['a', 'b'])).toBe('apt-get install -y --no-install-recommends a b');
    expect(missingMessage(['cpio']).join('\n')).toContain('NBDSNAP_TEST_ALLOW_MISSING=1');
  });

  it('not root, tools missing: prints the apt-get line and fails', async () => {
    // Only /nonexistent is searched: every tool is missing.
    const r = await setup({ NBDSNAP_SETUP_PATH: '/nonexistent', NBDSNAP_SETUP_AS_USER: '1' });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `install them as root (or run npm run setup as root):  ${aptLine(PACKAGES.map((p) => p.name))}`,
    );
    expect(r.stderr).not.toContain('apt-get update');
  });

  it('not root, tools missing, NBDSNAP_TEST_ALLOW_MISSING=1: goes on', async () => {
    const r = await setup({
      NBDSNAP_SETUP_PATH: '/nonexistent',
      NBDSNAP_SETUP_AS_USER: '1',
      NBDSNAP_TEST_ALLOW_MISSING: '1',
    });
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('going on without them');
  });

  it.skipIf(process.getuid?.() !== 0)('as root, tools missing: apt-get update, then install them', async () => {
    const r = await setup({ NBDSNAP_SETUP_PATH: '/nonexistent' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('would run: apt-get update -qq');
    expect(r.stderr).toContain(`would run: apt-get ${aptLine(PACKAGES.map((p) => p.name)).slice('apt-get '.length)}`);
  });

  it('everything here: nothing to do', async () => {
    const r = await setup({});
    expect(r, r.stderr).toMatchObject({ code: 0, stderr: '' });
  });
});
