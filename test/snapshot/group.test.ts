/**
 * Consistency groups: `snapshot create d1,d2 NAME` takes both snapshots at one point in time.
 *
 * Two writers run without pause, each writing an increasing counter n (the stamp of operation
 * A+n or B+n in one sector) to both devices, always waiting for the reply of the first write
 * before sending the second:
 * - writer A writes d1 then d2 (sector 0): at any instant d1 holds n and d2 holds n or n - 1,
 *   so in a snapshot of the pair  a1 - a2 ∈ {0, 1};
 * - writer B writes d2 then d1 (sector 8): likewise  b2 - b1 ∈ {0, 1}.
 * Snapshots taken one device after the other would, sooner or later, catch one writer between
 * its two writes the wrong way round (a2 > a1, b1 > b2, or a gap of 2 and more); a group cannot.
 * Two more connections write at random elsewhere on both devices, so every create drains
 * requests in flight and copies run. Eight groups are taken; each pair must hold a consistent
 * point, later groups later points, and every pair keeps its values after more writes and after
 * a restart.
 */
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import type { NbdClient } from '../../src/client/nbd-client.ts';
import { KiB, MiB, makeImage, makeSparse, Rig, tempDir } from '../helpers/snapshots.ts';
import { describeSector, stampedData, stampedImage } from '../helpers/stamps.ts';
import { rng } from '../helpers/workload.ts';

const SIZE = 4 * MiB;
const A = 1_000_000;
const B = 2_000_000;
const GROUPS = 8;
const dir = tempDir('nbdsnap-group-');
const rig = new Rig(dir.path, {
  devices: {
    d1: makeImage(join(dir.path, 'd1.img'), stampedImage(SIZE, 0)),
    d2: makeImage(join(dir.path, 'd2.img'), stampedImage(SIZE, 0)),
  },
  stores: [makeSparse(join(dir.path, 'store.img'), 64 * MiB)],
  chunkSize: '4K',
});
let stop = false;
/** Writer A's last counter sent. */
let progress = 0;

afterAll(async () => {
  stop = true;
  await rig.stop();
  dir.cleanup();
});

/** The counter in a sector written by writer `base`, checking the sector is whole and in place. */
function counter(sector: Buffer, base: number, offset: number, where: string): number {
  const seq = sector.readUInt32LE(4);
  if (seq === 0 && sector.equals(stampedData(0, offset, 512))) return 0; // not written yet
  if (seq <= base || !sector.equals(stampedData(seq, offset, 512)))
    throw new Error(`${where}: not a counter of writer ${base}: ${describeSector(sector, 0, offset / 512)}`);
  return seq - base;
}

async function pair(name: string): Promise<{ a1: number; a2: number; b1: number; b2: number }> {
  const [s1, s2] = await Promise.all([rig.open(`d1@${name}`), rig.open(`d2@${name}`)]);
  const [a1, b1, a2, b2] = await Promise.all([
    s1.read(0, 512),
    s1.read(4096, 512),
    s2.read(0, 512),
    s2.read(4096, 512),
  ]);
  await Promise.all([s1.close(), s2.close()]);
  return {
    a1: counter(a1 as Buffer, A, 0, `d1@${name} sector 0`),
    a2: counter(a2 as Buffer, A, 0, `d2@${name} sector 0`),
    b1: counter(b1 as Buffer, B, 4096, `d1@${name} sector 8`),
    b2: counter(b2 as Buffer, B, 4096, `d2@${name} sector 8`),
  };
}

async function counterWriter(first: NbdClient, second: NbdClient, base: number, offset: number) {
  for (let n = 1; !stop && n < 200_000; n++) {
    const data = stampedData(base + n, offset, 512);
    if (base === A) progress = n;
    await first.write(offset, data);
    await second.write(offset, data);
  }
}

async function noise(c1: NbdClient, c2: NbdClient, seed: number) {
  const random = rng(seed);
  for (let i = 0; !stop && i < 200_000; i++) {
    const c = random() < 0.5 ? c1 : c2;
    const offset = 64 * KiB + Math.floor(random() * (SIZE - 128 * KiB));
    await Promise.all(
      [0, 1, 2, 3].map((k) => c.write(offset + k * 9000, stampedData(3_000_000 + i * 4 + k, offset + k * 9000, 5000))),
    );
  }
}

it('every group snapshot is one point in time on both devices', async () => {
  await rig.start();
  const [a1, a2, b1, b2, n1, n2] = await Promise.all(['d1', 'd2', 'd1', 'd2', 'd1', 'd2'].map((d) => rig.open(d)));
  const writers = [
    counterWriter(a1 as NbdClient, a2 as NbdClient, A, 0),
    counterWriter(b2 as NbdClient, b1 as NbdClient, B, 4096),
    noise(n1 as NbdClient, n2 as NbdClient, 7),
  ];
  const seen: Awaited<ReturnType<typeof pair>>[] = [];
  try {
    for (let g = 0; g < GROUPS; g++) {
      // Let the writers move on between groups.
      for (const target = progress + 20; progress < target; ) await new Promise((r) => setTimeout(r, 1));
      expect(await rig.createSnapshot(['d1', 'd2'], `g${g}`)).toEqual([`d1@g${g}`, `d2@g${g}`]);
      const p = await pair(`g${g}`);
      expect(p.a1 - p.a2, `writer A (d1 then d2) in g${g}: ${JSON.stringify(p)}`).toBeOneOf([0, 1]);
      expect(p.b2 - p.b1, `writer B (d2 then d1) in g${g}: ${JSON.stringify(p)}`).toBeOneOf([0, 1]);
      const prev = seen[seen.length - 1];
      if (prev !== undefined) {
        expect(p.a1, `g${g} is later than g${g - 1}`).toBeGreaterThanOrEqual(prev.a1);
        expect(p.b2).toBeGreaterThanOrEqual(prev.b2);
      }
      seen.push(p);
    }
  } finally {
    stop = true;
    await Promise.all(writers);
  }
  // The writers did run through the groups (the check above was not vacuous).
  expect((seen[GROUPS - 1] as { a1: number }).a1).toBeGreaterThan((seen[0] as { a1: number }).a1);
  for (let g = 0; g < GROUPS; g++) expect(await pair(`g${g}`)).toEqual(seen[g]);
  const list = await rig.list();
  expect(list.filter((s) => s.state === 'valid')).toHaveLength(2 * GROUPS);

  await rig.restart('SIGKILL');
  for (let g = 0; g < GROUPS; g++) expect(await pair(`g${g}`), `g${g} after a restart`).toEqual(seen[g]);
});
