/**
 * Backups of an RBD-backed origin into the cluster's own S3 (radosgw): a full and an incremental
 * backup to `s3://BUCKET/KEY`, verified, and restored from RGW onto other RBD images (served by
 * their own qemu-nbd), byte for byte as the snapshots, checked through NBD and with `rbd export`.
 * A tampered, a truncated and a corrupted incremental object are refused at restore, writing
 * nothing to the target.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/client/nbd-client.ts';
import { CEPH_SKIP, type CephCluster, startCeph } from '../helpers/ceph.ts';
import { ok, sha256 } from '../helpers/clients.ts';
import { MiB, readExport, tempDir } from '../helpers/snapshots.ts';
import { History, Writers } from './history.ts';
import { type RbdRig, rbdRig } from './rbd-rig.ts';

const SIZE = 32 * MiB;
const BUCKET = 'backups';

describe.skipIf(CEPH_SKIP)('backups of an RBD-backed origin in RGW (s3://)', () => {
  const dir = tempDir('nbdsnap-cluster-backup-');
  let ceph: CephCluster;
  let r: RbdRig;
  let seq = 1;
  const bytes = new Map<string, Buffer>();

  beforeAll(async () => {
    ceph = await startCeph();
    r = await rbdRig(ceph, dir.path, 'vol', { size: SIZE, extra: ['--remote-timeout', '60'] });
    await r.rig.start();
    await ceph.createBucket(BUCKET);
  });
  afterAll(async () => {
    await r?.rig.stop();
    await ceph?.stop();
    dir.cleanup();
  });

  /** Random stamped writes through nbdsnap (`ops` of them), then a flush. */
  async function change(ops: number, seed: number): Promise<void> {
    const c = await r.rig.open('vol');
    const w = new Writers(new History(SIZE), { clients: [c], depth: 8, seed, firstSeq: seq, maxWrite: 256 * 1024 });
    w.start();
    await w.waitOps(ops);
    await w.stop();
    seq = w.nextSeq;
    expect(w.errors).toEqual([]);
    await c.flush();
  }

  /** A new RBD image of the origin's size (zeroes), served by its own qemu-nbd. */
  async function target(name: string) {
    await ceph.createImage(name, SIZE);
    return ceph.exportImage(name);
  }

  async function readUri(uri: string): Promise<Buffer> {
    const c = await NbdClient.open(uri);
    try {
      return await readExport(c);
    } finally {
      await c.close();
    }
  }

  const restore = (files: string[], uri: string, journal: string) =>
    ceph.nbdsnap(['restore', ...files, uri, '--journal', join(dir.path, journal)], 300_000);

  it('a full and an incremental backup to RGW restore onto another RBD image byte for byte', async () => {
    await change(150, 21);
    await r.rig.createSnapshot('vol', 'mon');
    bytes.set('mon', await r.rig.readAll('vol@mon'));
    ok(
      await ceph.nbdsnap(['backup', r.rig.uri('vol@mon'), `s3://${BUCKET}/vol/mon.nbk`], 300_000),
      'full backup to s3',
    );

    await change(40, 22);
    // a zeroed range too (the backup records it as zeroes, the restore writes zeroes)
    {
      const c = await r.rig.open('vol');
      await c.writeZeroes(5 * MiB, 3 * MiB);
      await c.flush();
    }
    await r.rig.createSnapshot('vol', 'tue');
    bytes.set('tue', await r.rig.readAll('vol@tue'));
    expect(sha256(bytes.get('tue') as Buffer)).not.toBe(sha256(bytes.get('mon') as Buffer));
    ok(
      await ceph.nbdsnap(
        ['backup', r.rig.uri('vol@tue'), `s3://${BUCKET}/vol/tue.nbk`, '--since', `s3://${BUCKET}/vol/mon.nbk`],
        300_000,
      ),
      'incremental backup to s3',
    );

    // exactly the two objects, no leftover part or temporary key; the incremental is the smaller
    expect((await ceph.listObjects(BUCKET)).sort()).toEqual(['vol/mon.nbk', 'vol/tue.nbk']);
    const mon = await ceph.getObject(BUCKET, 'vol/mon.nbk');
    const tue = await ceph.getObject(BUCKET, 'vol/tue.nbk');
    expect(tue.length).toBeLessThan(mon.length / 2);
    ok(await ceph.nbdsnap(['verify', `s3://${BUCKET}/vol/mon.nbk`, `s3://${BUCKET}/vol/tue.nbk`]), 'verify');

    // the whole chain at once onto a fresh image
    const copy = await target('copy');
    ok(await restore([`s3://${BUCKET}/vol/mon.nbk`, `s3://${BUCKET}/vol/tue.nbk`], copy.uri, 'copy.undo'), 'restore');
    expect(sha256(await readUri(copy.uri)), 'the restored image through qemu-nbd').toBe(
      sha256(bytes.get('tue') as Buffer),
    );
    expect(sha256(await ceph.readImage('copy')), 'the restored image in Ceph').toBe(sha256(bytes.get('tue') as Buffer));

    // one file at a time: the full, then the incremental onto the target that holds mon
    const step = await target('step');
    ok(await restore([`s3://${BUCKET}/vol/mon.nbk`], step.uri, 'step1.undo'), 'restore mon');
    expect(sha256(await ceph.readImage('step'))).toBe(sha256(bytes.get('mon') as Buffer));
    ok(await restore([`s3://${BUCKET}/vol/tue.nbk`], step.uri, 'step2.undo'), 'restore tue onto mon');
    expect(sha256(await ceph.readImage('step'))).toBe(sha256(bytes.get('tue') as Buffer));
  });

  it('a tampered, truncated or corrupted object in S3 is refused at restore; the target stays untouched', async () => {
    const mon = await ceph.getObject(BUCKET, 'vol/mon.nbk');
    const tue = await ceph.getObject(BUCKET, 'vol/tue.nbk');
    const flip = (b: Buffer, at: number) => {
      const x = Buffer.from(b);
      x[at] = (x[at] as number) ^ 0x40;
      return x;
    };
    await ceph.putObject(BUCKET, 'bad/mon-flipped.nbk', flip(mon, Math.floor(mon.length / 2)));
    await ceph.putObject(BUCKET, 'bad/mon-short.nbk', mon.subarray(0, mon.length - 4096));
    await ceph.putObject(BUCKET, 'bad/tue-flipped.nbk', flip(tue, tue.length - 100));

    const victim = await target('victim');
    const zero = sha256(Buffer.alloc(SIZE));
    const cases: [string, string[]][] = [
      ['a flipped byte in the full backup', [`s3://${BUCKET}/bad/mon-flipped.nbk`]],
      ['a truncated full backup', [`s3://${BUCKET}/bad/mon-short.nbk`]],
      [
        'a good full backup then a flipped incremental',
        [`s3://${BUCKET}/vol/mon.nbk`, `s3://${BUCKET}/bad/tue-flipped.nbk`],
      ],
    ];
    for (const [what, files] of cases) {
      const verify = await ceph.nbdsnap(['verify', ...files]);
      expect(verify.code, `verify, ${what}:\n${verify.stdout}${verify.stderr}`).toBe(1);
      const res = await restore(files, victim.uri, `victim-${files.length}.undo`);
      expect(res.code, `restore, ${what}:\n${res.stdout}${res.stderr}`).toBe(1);
      // refused for what is wrong with the tampered object, named (not for a missing one)
      expect(res.stderr).toMatch(/^nbdsnap: error: /m);
      expect(res.stderr).toContain(files[files.length - 1]);
      expect(res.stderr).not.toMatch(/no such object/);
      expect(sha256(await ceph.readImage('victim')), `the target after ${what}`).toBe(zero);
    }
    // and the good chain still restores onto it
    ok(
      await restore([`s3://${BUCKET}/vol/mon.nbk`, `s3://${BUCKET}/vol/tue.nbk`], victim.uri, 'victim-ok.undo'),
      'restore',
    );
    expect(sha256(await ceph.readImage('victim'))).toBe(sha256(bytes.get('tue') as Buffer));
  });
});
