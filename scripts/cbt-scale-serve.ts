/**
 * Change tracking at scale through a real server: a 15 TiB sparse origin, snapshot `a`, then six
 * eras of MARKS/6 scattered 64 KiB blocks marked changed (`cbt.markDirty`, so no copies are
 * needed), each closed by a snapshot s1..s6; then the time of `nbdinfo --map` of the origin's
 * base:allocation and of `qemu:dirty-bitmap:a` on the export of s6, of `cbt.changed` a..s6 (what
 * `nbdsnap cbt` asks), and the server's RSS.
 * Needs a filesystem that holds a 15 TiB sparse file.
 *
 *   node --import tsx scripts/cbt-scale-serve.ts [MARKS]
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { rng } from '../test/helpers/random.ts';
import { MiB, makeSparse, Rig, tempDir } from '../test/helpers/snapshots.ts';

const TiB = 2 ** 40;
const SIZE = 15 * TiB;
const BLOCK = 64 * 1024;
const MARKS = Number(process.argv[2] ?? 20000);
const random = rng(7);
const dir = tempDir();
const disk = makeSparse(join(dir.path, 'disk.img'), SIZE);
const store = makeSparse(join(dir.path, 'store.img'), 256 * MiB);
const rig = new Rig(dir.path, { devices: { disk }, stores: [store] });
const hwm = () => readFileSync(`/proc/${rig.server?.pid}/status`, 'utf8').match(/VmHWM:\s+(\d+)/)?.[1];
const rss = () => readFileSync(`/proc/${rig.server?.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)?.[1];
try {
  await rig.start();
  await rig.createSnapshot('disk', 'a');
  const t0 = performance.now();
  for (let s = 1; s <= 6; s++) {
    const n = Math.floor(MARKS / 6);
    for (let i = 0; i < n; i += 32) {
      await Promise.all(
        Array.from({ length: Math.min(32, n - i) }, () =>
          rig.ctl('cbt.markDirty', {
            device: 'disk',
            offset: Math.floor(random() * (SIZE / BLOCK)) * BLOCK,
            length: BLOCK,
          }),
        ),
      );
    }
    await rig.createSnapshot('disk', `s${s}`);
  }
  console.log(
    `marked ${MARKS} blocks in 6 eras in ${((performance.now() - t0) / 1000).toFixed(1)} s; server RSS ${rss()} KiB`,
  );
  const list = await rig.list();
  const s6 = list.find((s) => s.name === 's6');
  for (const [what, uri, ctx] of [
    ['origin base:allocation', rig.uri('disk'), 'base:allocation'],
    ['s6 qemu:dirty-bitmap:a', rig.uri(s6?.export ?? ''), 'qemu:dirty-bitmap:a'],
  ] as const) {
    const t = performance.now();
    const out = execFileSync('nbdinfo', [`--map=${ctx}`, uri], { maxBuffer: 1 << 28 }).toString();
    const lines = out.trim().split('\n');
    const dirty = lines.filter((l) => /\s1\s+dirty$/.test(l)).length;
    console.log(
      `nbdinfo --map=${ctx} (${what}): ${((performance.now() - t) / 1000).toFixed(2)} s, ${lines.length} lines, ${dirty} dirty; server RSS ${rss()} KiB, peak ${hwm()} KiB`,
    );
    if (ctx !== 'base:allocation') console.log(lines.slice(0, 3).join('\n'));
  }
  const t = performance.now();
  const changed = await rig.ctl<{ ranges: unknown[]; changedBytes: number }>('cbt.changed', {
    device: 'disk',
    from: 'a',
    to: 's6',
  });
  console.log(
    `cbt.changed a..s6 (nbdsnap cbt): ${((performance.now() - t) / 1000).toFixed(2)} s, ${changed.ranges.length} ranges, ${changed.changedBytes / BLOCK} blocks`,
  );
} finally {
  await rig.stop('SIGTERM');
  dir.cleanup();
}
