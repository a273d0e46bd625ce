/**
 * Exclusive ownership for a server's lifetime, with real servers:
 * - a second server on the same origin and store, or on the same store with another origin, is
 *   refused in one line naming the path and the first server's pid; the first is unharmed and
 *   its snapshot reads exactly (also after a restart);
 * - read-only servers (`-r`) share an origin, as qemu's readers do; a writer and a reader of the
 *   same origin do not (qemu's default, without force-share);
 * - `store append` of a file another server holds as its origin is refused;
 * - a loop device over a served origin file, given as `--store` or to `store append`, is refused
 *   (skipped with the reason where no loop device can be set up, failed under CI=true);
 * - a block device another server holds, or a mounted one, is refused (O_EXCL, as mkfs does);
 * - the control socket and `-k` socket of a live server are never taken over, a stale one (its
 *   server SIGKILLed) is replaced, and a regular file at the path is refused and left as it was;
 * - `--pid-file` through a symlink replaces the symlink, never the file it points to.
 */
import { existsSync, lstatSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { background, type RunResult, run, stopQuietly, waitForFile } from '../helpers/clients.ts';
import { attachLoop, detachLoop, noLoop } from '../helpers/loop.ts';
import { CLI, freshPort, type RunningServer, startServer } from '../helpers/server.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, nbdsnap, Rig, tempDir } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

const dir = tempDir('nbdsnap-own-');
afterAll(() => dir.cleanup());

function subdir(name: string): string {
  const path = join(dir.path, name);
  mkdirSync(path);
  return path;
}

/** The run failed with exactly one `nbdsnap: error:` line; returns it. */
function oneError(r: RunResult): string {
  expect(r.signal, `still running:\n${r.stdout}\n${r.stderr}`).toBeNull();
  expect(r.code, r.stderr).not.toBe(0);
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^nbdsnap: error: /);
  return lines[0] as string;
}

/** `nbdsnap serve ARGS...` expected to be refused: runs to its exit. */
const serveRefused = async (args: string[]): Promise<string> =>
  oneError(await nbdsnap(['serve', ...args, '-p', String(freshPort()), '-b', '127.0.0.1'], 20_000));

const re = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('a second server on the same storage', () => {
  const sub = subdir('two');
  const origin = stampedImage(4 * MiB, 0);
  const disk = makeImage(join(sub, 'disk.img'), origin);
  const store = makeSparse(join(sub, 'store.img'), 16 * MiB);
  const rig = new Rig(sub, { devices: { disk }, stores: [store], chunkSize: '4K' });
  let snap: Buffer;
  afterAll(() => rig.stop());

  it('the first server takes a snapshot and copies on write', async () => {
    await rig.start();
    await rig.createSnapshot('disk', 's1');
    snap = Buffer.from(origin);
    const c = await rig.open('disk');
    const data = stampedData(1, 8 * KiB, 256 * KiB);
    await c.write(8 * KiB, data);
    await c.flush();
    data.copy(origin, 8 * KiB);
  });

  it('refuses a second server on the same origin and store, naming the path and the holder', async () => {
    const pid = rig.server?.pid as number;
    const line = await serveRefused([
      `disk=${disk}`,
      '--store',
      store,
      '--control',
      join(sub, 'other.sock'),
      '--chunk-size',
      '4K',
    ]);
    expect(line).toMatch(new RegExp(`${re(disk)} is in use: held by pid ${pid} \\(`));
  });

  it('refuses a second server on the same store with another origin', async () => {
    const other = makeImage(join(sub, 'other.img'), stampedImage(4 * MiB, 7));
    const line = await serveRefused([`other=${other}`, '--store', store, '--control', join(sub, 'other.sock')]);
    expect(line).toMatch(new RegExp(`${re(store)} is in use: held by pid ${rig.server?.pid} \\(`));
    // The refused server wrote nothing: its own origin is as it was.
    assertSame(readFileSync(other), stampedImage(4 * MiB, 7), 'the refused server origin');
  });

  it('leaves the first server unharmed: the snapshot reads exactly, writes go on', async () => {
    expect((await rig.list()).map((s) => `${s.export}:${s.state}`)).toEqual(['disk@s1:valid']);
    assertSame(await rig.readAll('disk@s1'), snap, 'disk@s1');
    const c = await rig.open('disk');
    const data = stampedData(2, 1 * MiB, 300 * KiB);
    await c.write(1 * MiB, data);
    await c.flush();
    data.copy(origin, 1 * MiB);
    assertSame(await rig.readAll('disk'), origin, 'disk');
    assertSame(await rig.readAll('disk@s1'), snap, 'disk@s1 after more writes');
  });

  it('and after a restart the snapshot is still valid and exact', async () => {
    await rig.restart();
    expect((await rig.list()).map((s) => `${s.export}:${s.state}`)).toEqual(['disk@s1:valid']);
    assertSame(await rig.readAll('disk@s1'), snap, 'disk@s1 after restart');
    assertSame(await rig.readAll('disk'), origin, 'disk after restart');
  });
});

describe('readers share an origin, a writer does not', () => {
  const sub = subdir('readers');
  const content = stampedImage(2 * MiB, 3);
  const disk = makeImage(join(sub, 'disk.img'), content);
  const servers: RunningServer[] = [];
  afterAll(async () => {
    for (const s of servers) await stopQuietly(s);
  });

  it('two read-only servers of one origin both start and serve it', async () => {
    servers.push(await startServer([`disk=${disk}`, '-r']));
    servers.push(await startServer([`disk=${disk}`, '-r']));
    for (const s of servers) {
      const c = await NbdClient.open(s.uri('disk'));
      try {
        assertSame(await c.read(0, 2 * MiB), content, `reader on port ${s.port}`);
      } finally {
        await c.close();
      }
    }
  });

  it('a writer of that origin is refused while they read', async () => {
    const line = await serveRefused([`disk=${disk}`]);
    const pids = servers.map((s) => s.pid).join('|');
    expect(line).toMatch(new RegExp(`${re(disk)} is in use: held by pid (${pids}) \\(`));
  });

  it('a reader is refused while a writer serves it', async () => {
    for (const s of servers.splice(0)) await s.stop();
    const writer = await startServer([`disk=${disk}`]);
    servers.push(writer);
    const line = await serveRefused([`disk=${disk}`, '-r']);
    expect(line).toMatch(new RegExp(`${re(disk)} is in use: held by pid ${writer.pid} \\(`));
  });
});

describe('store append of storage another server holds', () => {
  const sub = subdir('append');
  const origin = stampedImage(4 * MiB, 0);
  const disk = makeImage(join(sub, 'disk.img'), origin);
  const rig = new Rig(sub, { devices: { disk }, stores: [makeSparse(join(sub, 'store.img'), 16 * MiB)] });
  const otherImage = makeImage(join(sub, 'other.img'), stampedImage(4 * MiB, 5));
  let other: RunningServer | undefined;
  afterAll(async () => {
    await rig.stop();
    await stopQuietly(other);
  });

  it('refuses a file another server serves as its origin, and it stays untouched', async () => {
    await rig.start();
    await rig.createSnapshot('disk', 's1');
    other = await startServer([`other=${otherImage}`]);
    const line = oneError(await rig.cli(['store', 'append', otherImage]));
    expect(line).toMatch(new RegExp(`${re(otherImage)} is in use: held by pid ${other.pid} \\(`));
    const status = await rig.ctl<{ ranges: unknown[] }>('store.status');
    expect(status.ranges).toHaveLength(1);
    const c = await NbdClient.open(other.uri('other'));
    try {
      assertSame(await c.read(0, 4 * MiB), stampedImage(4 * MiB, 5), 'the other server origin');
    } finally {
      await c.close();
    }
  });
});

describe('a loop device over a served origin', () => {
  const sub = subdir('loop');
  const origin = stampedImage(4 * MiB, 0);
  const disk = makeImage(join(sub, 'disk.img'), origin);
  const rig = new Rig(sub, { devices: { disk }, stores: [makeSparse(join(sub, 'store.img'), 16 * MiB)] });
  afterAll(() => rig.stop());

  it('is refused as --store of another server and by store append, and the origin is untouched', async (ctx) => {
    await rig.start();
    await rig.createSnapshot('disk', 's1');
    const whole = attachLoop(disk);
    if ('reason' in whole) return noLoop(whole.reason, ctx.skip);
    const tail = attachLoop(disk, 2 * MiB);
    try {
      if ('reason' in tail) return noLoop(tail.reason, ctx.skip);
      const pid = rig.server?.pid as number;
      const over = new RegExp(
        `${re(whole.device)} \\(a loop device over ${re(disk)}\\) is in use: held by pid ${pid} `,
      );
      // Another server with the alias as its store (and an origin of its own).
      const mine = makeImage(join(sub, 'mine.img'), stampedImage(1 * MiB, 9));
      expect(await serveRefused([`mine=${mine}`, '--store', whole.device])).toMatch(over);
      // The origin's own server: the same bytes under another name, one range or a part of it.
      const ownLine = oneError(await rig.cli(['store', 'append', whole.device]));
      expect(ownLine).toMatch(/overlaps the origin device disk/);
      expect(ownLine).toContain(`a loop device over ${disk}`);
      expect(oneError(await rig.cli(['store', 'append', `${tail.device}:8+2048`]))).toMatch(
        /overlaps the origin device disk/,
      );
      // A new server given the origin file and its alias as the store.
      await rig.stop();
      expect(await serveRefused([`disk=${disk}`, '--store', tail.device])).toMatch(
        /overlaps the origin device disk .*a loop device over/,
      );
      await rig.start();
      expect((await rig.list()).map((s) => `${s.export}:${s.state}`)).toEqual(['disk@s1:valid']);
      assertSame(await rig.readAll('disk'), origin, 'origin');
      assertSame(await rig.readAll('disk@s1'), origin, 'disk@s1');
    } finally {
      if ('device' in tail) detachLoop(tail.device);
      detachLoop(whole.device);
    }
  });
});

describe('a block device in use', () => {
  const sub = subdir('blockdev');

  it('a loop device another server holds as its store is refused, naming that server', async (ctx) => {
    const loop = attachLoop(makeSparse(join(sub, 'store.img'), 16 * MiB));
    if ('reason' in loop) return noLoop(loop.reason, ctx.skip);
    let first: RunningServer | undefined;
    try {
      first = await startServer([
        `a=${makeImage(join(sub, 'a.img'), stampedImage(1 * MiB, 1))}`,
        '--store',
        loop.device,
      ]);
      const b = makeImage(join(sub, 'b.img'), stampedImage(1 * MiB, 2));
      const line = await serveRefused([`b=${b}`, '--store', loop.device]);
      expect(line).toMatch(new RegExp(`${re(loop.device)} .*is in use: held by pid ${first.pid} \\(`));
    } finally {
      await stopQuietly(first);
      detachLoop(loop.device);
    }
  });

  it('a mounted block device is refused as a writable origin, as mkfs refuses it', async (ctx) => {
    const image = makeSparse(join(sub, 'fs.img'), 16 * MiB);
    const mkfs = await run('mkfs.ext4', ['-q', '-F', image]);
    if (mkfs.code !== 0) return ctx.skip(`mkfs.ext4 failed: ${mkfs.stderr}`);
    const loop = attachLoop(image);
    if ('reason' in loop) return noLoop(loop.reason, ctx.skip);
    const mnt = join(sub, 'mnt');
    mkdirSync(mnt);
    try {
      const mount = await run('mount', [loop.device, mnt]);
      if (mount.code !== 0) return noLoop(`cannot mount ${loop.device}: ${mount.stderr.trim()}`, ctx.skip);
      const line = await serveRefused([`fs=${loop.device}`]);
      expect(line).toMatch(new RegExp(`${re(loop.device)} .*is in use: mounted at ${re(mnt)}`));
    } finally {
      await run('umount', [mnt]);
      detachLoop(loop.device);
    }
  });
});

describe('sockets of a live server are never taken over', () => {
  const sub = subdir('sockets');
  const origin = stampedImage(2 * MiB, 0);
  const sock = join(sub, 'nbd.sock');
  const rig = new Rig(sub, {
    devices: { disk: makeImage(join(sub, 'disk.img'), origin) },
    stores: [makeSparse(join(sub, 'store.img'), 8 * MiB)],
    extra: ['-k', sock],
  });
  afterAll(() => rig.stop());

  async function answersOnBoth(): Promise<void> {
    expect(await rig.list()).toEqual([]);
    const c = await NbdClient.open(`nbd+unix:///disk?socket=${sock}`);
    try {
      assertSame(await c.read(0, 64 * KiB), origin.subarray(0, 64 * KiB), 'read over the -k socket');
    } finally {
      await c.close();
    }
  }

  it('a second server on the control socket is refused, the first still answers on both', async () => {
    await rig.start();
    const line = await serveRefused(['m=memory:1M', '--control', rig.control]);
    expect(line).toBe(`nbdsnap: error: another server is listening on ${rig.control}`);
    await answersOnBoth();
  });

  it('a second server on the -k socket is refused, the first still answers on both', async () => {
    const line = await serveRefused(['m=memory:1M', '-k', sock, '--control', join(sub, 'second.sock')]);
    expect(line).toBe(`nbdsnap: error: another server is listening on ${sock}`);
    expect(existsSync(join(sub, 'second.sock')), 'the refused server closed its control socket').toBe(false);
    await answersOnBoth();
  });

  it('stale sockets (their server SIGKILLed) are replaced', async () => {
    await rig.stop('SIGKILL');
    expect(lstatSync(rig.control).isSocket()).toBe(true);
    expect(lstatSync(sock).isSocket()).toBe(true);
    await rig.start();
    await answersOnBoth();
  });

  it('a regular file at a socket path is refused and left as it was', async () => {
    const file = join(sub, 'not-a-socket');
    writeFileSync(file, 'keep me\n');
    const asControl = await serveRefused(['m=memory:1M', '--control', file]);
    expect(asControl).toMatch(/not a socket/);
    const asNbd = await serveRefused(['m=memory:1M', '-k', file]);
    expect(asNbd).toMatch(/not a socket/);
    expect(readFileSync(file, 'utf8')).toBe('keep me\n');
  });
});

describe('--pid-file', () => {
  const sub = subdir('pid');

  it('through a symlink replaces the link, never the file it points to', async () => {
    const victim = join(sub, 'victim');
    writeFileSync(victim, 'precious\n');
    const link = join(sub, 'server.pid');
    symlinkSync(victim, link);
    const srv = background(process.execPath, [
      CLI,
      'serve',
      'm=memory:1M',
      '-p',
      String(freshPort()),
      '-b',
      '127.0.0.1',
      '--pid-file',
      link,
    ]);
    try {
      // Ready once the link has been replaced by a regular file holding the pid.
      const deadline = Date.now() + 30_000;
      while (lstatSync(link).isSymbolicLink()) {
        if (srv.child.exitCode !== null || Date.now() > deadline) throw new Error(`not ready:\n${srv.output()}`);
        await new Promise((r) => setTimeout(r, 25));
      }
      await waitForFile(link, srv);
      expect(readFileSync(link, 'utf8')).toBe(`${srv.child.pid}\n`);
      expect(lstatSync(link).isFile()).toBe(true);
      expect(lstatSync(link).mode & 0o777).toBe(0o644);
      expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    } finally {
      srv.kill();
      await srv.exited;
    }
  });

  it('in a directory that does not exist is refused at start in one line', async () => {
    const line = await serveRefused(['m=memory:1M', '--pid-file', join(sub, 'missing', 'x.pid')]);
    expect(line).toMatch(/cannot write the pid file .*missing.*does not exist/);
  });
});
