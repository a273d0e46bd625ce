/**
 * An nbdsnap in front of an RBD image, as on a hypervisor: the image is served by qemu-nbd (qemu's
 * rbd driver) and given to `nbdsnap serve NAME=nbd://127.0.0.1:PORT`; the difference store is a
 * local sparse file (the store is per host). The image starts filled with stamped sectors of
 * write 0 (test/helpers/stamps.ts), written straight to qemu-nbd.
 *
 * CLUSTER_ORIGIN=file runs the same tests with a local file origin instead (to check the tests
 * themselves on a build without remote origins); tests that need no S3 then start no cluster.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { NbdClient } from '../../src/client/nbd-client.ts';
import type { CephCluster, ImageExport } from '../helpers/ceph.ts';
import { MiB, makeImage, makeSparse, Rig } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

export const LOCAL_ORIGIN = process.env.CLUSTER_ORIGIN === 'file';

export interface RbdRig {
  rig: Rig;
  /** The qemu-nbd serving the image (undefined with CLUSTER_ORIGIN=file). */
  ex: ImageExport | undefined;
  image: string;
}

/** Write `data` to an NBD export in 1 MiB pieces, 8 in flight, then flush. */
export async function writeWhole(uri: string, data: Buffer, offset = 0): Promise<void> {
  const c = await NbdClient.open(uri);
  try {
    let next = 0;
    const worker = async () => {
      while (next < data.length) {
        const at = next;
        next += MiB;
        await c.write(offset + at, data.subarray(at, Math.min(at + MiB, data.length)));
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    await c.flush();
  } finally {
    await c.close();
  }
}

export interface RbdRigOptions {
  size: number;
  storeSize?: number;
  chunkSize?: string;
  /** Extra `nbdsnap serve` options. */
  extra?: string[];
  /** Fill the image with stamped sectors of write 0 (default true). */
  stamped?: boolean;
  /** --store specs instead of a local sparse file (e.g. another RBD image's nbd:// URI). */
  stores?: string[];
}

/** Create RBD image `image`, fill it, serve it with qemu-nbd and put an nbdsnap (not started) in front. */
export async function rbdRig(
  ceph: CephCluster | undefined,
  parent: string,
  image: string,
  o: RbdRigOptions,
): Promise<RbdRig> {
  // a folder per rig: its control socket, store and (CLUSTER_ORIGIN=file) image
  const dir = join(parent, image);
  mkdirSync(dir, { recursive: true });
  const content = o.stamped === false ? undefined : stampedImage(o.size, 0);
  const stores = o.stores ?? [makeSparse(join(dir, `${image}.store`), o.storeSize ?? 4 * o.size)];
  let origin: string;
  let ex: ImageExport | undefined;
  if (LOCAL_ORIGIN) {
    origin = content === undefined ? makeSparse(join(dir, image), o.size) : makeImage(join(dir, image), content);
  } else {
    if (ceph === undefined) throw new Error('no cluster');
    await ceph.createImage(image, o.size);
    ex = await ceph.exportImage(image);
    if (content !== undefined) await writeWhole(ex.uri, content);
    origin = ex.uri;
  }
  const rig = new Rig(dir, {
    devices: { [image]: origin },
    stores,
    ...(o.chunkSize === undefined ? {} : { chunkSize: o.chunkSize }),
    // remote-origin options mean nothing to a local file origin
    extra: LOCAL_ORIGIN
      ? (o.extra ?? []).filter((_, i, a) => !a[i]?.startsWith('--remote') && !a[i - 1]?.startsWith('--remote'))
      : (o.extra ?? []),
  });
  return { rig, ex, image };
}

/** Stamped writes of `seq`, `seq + 1`, ... at the given [offset, length) pieces, through `c`, then flush. */
export async function stampedWrites(c: NbdClient, pieces: { offset: number; length: number }[], seq: number) {
  for (const p of pieces) await c.write(p.offset, stampedData(seq++, p.offset, p.length));
  await c.flush();
  return seq;
}
