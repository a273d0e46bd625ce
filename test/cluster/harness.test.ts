// The Ceph harness itself (scripts/ceph-cluster.sh, test/helpers/ceph.ts): an RBD image served by
// qemu-nbd reads back what nbdcopy wrote, through NBD and through `rbd export`; it survives a
// qemu-nbd kill and restart on the same port; S3 objects round-trip through RGW; `stop` leaves no
// daemon running.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CEPH_SCRIPT, CEPH_SKIP, type CephCluster, startCeph } from '../helpers/ceph.ts';
import { background, MiB, ok, pattern, run, sha256 } from '../helpers/clients.ts';
import { tempDir } from '../helpers/server.ts';

describe.skipIf(CEPH_SKIP)('single-node Ceph harness', () => {
  let ceph: CephCluster;
  const tmp = tempDir('nbdsnap-ceph-harness-');

  beforeAll(async () => {
    ceph = await startCeph();
  });
  afterAll(async () => {
    await ceph?.stop();
    tmp.cleanup();
  });

  it('serves an RBD image over NBD with qemu-nbd: nbdcopy in, nbdcopy and rbd export out', async () => {
    await ceph.createImage('h1', 16 * MiB);
    const ex = await ceph.exportImage('h1');
    const info = JSON.parse(ok(await run('nbdinfo', ['--json', ex.uri]), 'nbdinfo')) as {
      exports: { 'export-size': number; can_flush: boolean; can_fua: boolean }[];
    };
    expect(info.exports[0]?.['export-size']).toBe(16 * MiB);
    expect(info.exports[0]?.can_flush).toBe(true);
    const data = pattern(16 * MiB, 7);
    const file = join(tmp.path, 'in');
    writeFileSync(file, data);
    ok(await run('nbdcopy', ['--flush', file, ex.uri]), 'nbdcopy in');
    ok(await run('nbdcopy', [ex.uri, join(tmp.path, 'out')]), 'nbdcopy out');
    expect(sha256(readFileSync(join(tmp.path, 'out')))).toBe(sha256(data));
    expect(sha256(await ceph.readImage('h1'))).toBe(sha256(data));

    // a crash of qemu-nbd, then the same image on the same port again
    await ex.kill();
    expect((await run('nbdinfo', ['--size', ex.uri])).code).not.toBe(0);
    await ex.restart();
    expect(ok(await run('nbdinfo', ['--size', ex.uri])).trim()).toBe(String(16 * MiB));
  });

  it('round-trips objects through RGW with the cluster keys', async () => {
    await ceph.createBucket('harness');
    const body = pattern(3 * MiB + 17, 3);
    await ceph.putObject('harness', 'dir/a b.bin', body);
    expect(await ceph.listObjects('harness', 'dir/')).toEqual(['dir/a b.bin']);
    expect(sha256(await ceph.getObject('harness', 'dir/a b.bin'))).toBe(sha256(body));
    // a wrong secret is refused
    const bad = await run('curl', [
      '-sf',
      '--aws-sigv4',
      `aws:amz:${ceph.s3.region}:s3`,
      '--user',
      `${ceph.s3.accessKey}:nope`,
      '-H',
      'x-amz-content-sha256: UNSIGNED-PAYLOAD',
      `${ceph.s3.endpoint}/harness/dir/a%20b.bin`,
    ]);
    expect(bad.code).not.toBe(0);
  });

  it('stops every daemon it started, by pid (the last test: it stops the cluster of this file)', async () => {
    const ex = await ceph.exportImage('h1');
    const status = await ceph.status();
    expect(status).toMatch(/^health: HEALTH_OK/m);
    const pids = [...status.matchAll(/^\S+ (\d+) running$/gm)].map((m) => Number(m[1]));
    // mon, mgr, osd, rgw, the qemu-nbd of the first test, this one, and the watcher
    expect(pids.length).toBe(7);
    expect(pids).toContain(ex.pid);
    await ceph.stop();
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
  });
});

describe('ceph-cluster.sh stop', () => {
  it('signals only what it started for that folder: a pid reused by another process is left alone', async () => {
    const tmp = tempDir('nbdsnap-ceph-stop-');
    try {
      const dir = join(tmp.path, 'c');
      mkdirSync(join(dir, 'run'), { recursive: true });
      // a process named like a daemon, but not started for this folder (no CEPH_CONF=DIR/ceph.conf)
      const impostor = background('bash', ['-c', 'exec -a qemu-nbd sleep 60']);
      const plain = background('sleep', ['60']);
      await new Promise((r) => setTimeout(r, 200));
      writeFileSync(join(dir, 'run', 'qemu-nbd.x.1.pid'), `${impostor.child.pid}\n`);
      writeFileSync(join(dir, 'run', 'mon.a.pid'), `${plain.child.pid}\n`);
      const status = ok(await run('bash', [CEPH_SCRIPT, 'status', dir]), 'status');
      expect(status).toMatch(new RegExp(`^qemu-nbd.x.1 ${impostor.child.pid} dead$`, 'm'));
      expect(status).toMatch(new RegExp(`^mon.a ${plain.child.pid} dead$`, 'm'));
      ok(await run('bash', [CEPH_SCRIPT, 'stop', dir]), 'stop');
      expect(() => process.kill(impostor.child.pid as number, 0)).not.toThrow();
      expect(() => process.kill(plain.child.pid as number, 0)).not.toThrow();
      impostor.kill('SIGKILL');
      plain.kill('SIGKILL');
    } finally {
      tmp.cleanup();
    }
  });
});
