/**
 * The other NBD URI forms for a remote origin: `nbd+unix:///EXPORT?socket=PATH` (qemu-nbd -k) and
 * `nbds://USER@HOST:PORT/?tls-psk-file=FILE` (nbdkit --tls=require with a PSK), and the usage
 * errors of the image spec.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseImage } from '../../src/cli/args.ts';
import { background, hasTool, MiB, ok, run, waitForFile } from '../helpers/clients.ts';
import { freshPort } from '../helpers/server.ts';
import { Rig, tempDir } from '../helpers/snapshots.ts';
import { blockData } from './model.ts';

const dir = tempDir('nbdsnap-rtransport-');
afterAll(() => dir.cleanup());

describe('image specs naming remote exports', () => {
  it('takes NAME=URI and a bare URI (named after its export); refuses a URI with no name', () => {
    expect(parseImage('web=nbd://10.0.0.5:10809/rbd-web')).toEqual({
      name: 'web',
      path: 'nbd://10.0.0.5:10809/rbd-web',
      remote: true,
    });
    expect(parseImage('nbd+unix:///vol1?socket=/run/q.sock')).toEqual({
      name: 'vol1',
      path: 'nbd+unix:///vol1?socket=/run/q.sock',
      remote: true,
    });
    expect(parseImage('d=nbds://alice@h/x?tls-psk-file=/k.psk').path).toBe('nbds://alice@h/x?tls-psk-file=/k.psk');
    expect(() => parseImage('nbd://127.0.0.1:10809/')).toThrow(/names no export: give it as NAME=nbd/);
    expect(() => parseImage('d=nbd+unix:///x')).toThrow(/not an NBD URI/);
  });
});

describe.skipIf(!hasTool('qemu-nbd') || !hasTool('nbdkit') || !hasTool('psktool'))('remote transports', () => {
  it('an origin over a Unix socket (nbd+unix://)', async () => {
    const img = join(dir.path, 'unix.img');
    await run('truncate', ['-s', String(8 * MiB), img]);
    const sock = join(dir.path, 'q.sock');
    const pid = join(dir.path, 'q.pid');
    const q = background('qemu-nbd', [
      '-f',
      'raw',
      '-k',
      sock,
      '-x',
      'vol',
      '-t',
      '--shared=4',
      '--pid-file',
      pid,
      img,
    ]);
    await waitForFile(pid, q);
    const rig = new Rig(dir.path, { devices: { vol: `nbd+unix:///vol?socket=${sock}` }, stores: [] });
    try {
      await rig.start();
      const c = await rig.open('vol');
      await c.write(MiB, blockData(3));
      await c.flush();
      expect((await c.read(MiB, 4096)).equals(blockData(3))).toBe(true);
    } finally {
      await rig.stop();
      q.kill();
      await q.exited;
    }
  });

  it('an origin over TLS with a pre-shared key (nbds://)', async () => {
    const psk = join(dir.path, 'keys.psk');
    ok(await run('psktool', ['-u', 'alice', '-p', psk]), 'psktool');
    const port = freshPort();
    const pid = join(dir.path, 'k.pid');
    const k = background('nbdkit', [
      '-f',
      '-p',
      String(port),
      '-i',
      '127.0.0.1',
      '-P',
      pid,
      '--tls=require',
      `--tls-psk=${psk}`,
      'memory',
      '8M',
    ]);
    await waitForFile(pid, k);
    const rig = new Rig(dir.path, {
      devices: { disk: `nbds://alice@127.0.0.1:${port}/?tls-psk-file=${psk}` },
      stores: [],
    });
    try {
      const srv = await rig.start();
      expect(srv.stderr()).not.toContain(psk); // the URI's query is not logged
      const c = await rig.open('disk');
      await c.write(0, blockData(4));
      expect((await c.read(0, 4096)).equals(blockData(4))).toBe(true);
    } finally {
      await rig.stop();
      k.kill();
      await k.exited;
    }
  });
});
