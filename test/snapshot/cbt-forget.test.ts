/**
 * Forgetting change-tracking points on a real `nbdsnap serve` (default `--cbt-keep-deleted 1`):
 * snapshots are taken and deleted with writes in between (the first block, the short last block,
 * a writable snapshot's own writes); after each step every query between the points kept answers
 * exactly as a model says, through `nbdinfo --map=qemu:dirty-bitmap:FROM` on snapshot exports
 * and through `cbt.changed`; a forgotten point is refused by name (control, CLI and backup, and
 * the block status of a connection that negotiated its bitmap before), as is forgetting a
 * snapshot that exists or an unknown point; and all of it survives a clean stop and a SIGKILL.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hasTool } from '../helpers/clients.ts';
import { startMerge, waitMergeDone } from '../helpers/merge.ts';
import { KiB, MiB, makeSparse, nbdsnap, Rig, tempDir } from '../helpers/snapshots.ts';

const BS = 64 * KiB;
const SIZE = 16 * MiB + 8 * KiB; // 257 tracking blocks, the last one 8 KiB
const BLOCKS = Math.ceil(SIZE / BS);
const haveNbdinfo = hasTool('nbdinfo');

interface PointInfo {
  name: string;
  seq: number;
  snapshot: boolean;
}

interface Changed {
  ranges: { offset: number; length: number }[];
}

/** What the server must answer: blocks written per era, and the points (name -> seq). */
class Model {
  readonly eras = new Map<number, Set<number>>();
  readonly points = new Map<string, { seq: number; snapshot: boolean }>();
  nextSeq = 1;

  mark(era: number, block: number): void {
    const set = this.eras.get(era) ?? new Set<number>();
    set.add(block);
    this.eras.set(era, set);
  }

  changed(from: string, to?: string): number[] {
    const a = this.seq(from);
    const b = to === undefined ? Number.POSITIVE_INFINITY : this.seq(to);
    const out = new Set<number>();
    for (const [era, blocks] of this.eras) if (era > a && era <= b) for (const x of blocks) out.add(x);
    return [...out].sort((x, y) => x - y);
  }

  seq(name: string): number {
    const p = this.points.get(name);
    if (p === undefined) throw new Error(`model: no point ${name}`);
    return p.seq;
  }

  list(): PointInfo[] {
    return [...this.points]
      .map(([name, p]) => ({ name, seq: p.seq, snapshot: p.snapshot }))
      .sort((a, b) => a.seq - b.seq);
  }
}

function blocksOfRanges(ranges: { offset: number; length: number }[]): number[] {
  const out: number[] = [];
  for (const r of ranges) for (let b = Math.floor(r.offset / BS); b * BS < r.offset + r.length; b++) out.push(b);
  return out;
}

/** The blocks `nbdinfo --map=qemu:dirty-bitmap:FROM` of `uri` calls dirty (checking coverage). */
function dirtyMap(from: string, uri: string): number[] {
  const r = spawnSync('nbdinfo', ['--json', `--map=qemu:dirty-bitmap:${from}`, uri], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status !== 0) throw new Error(`nbdinfo failed: ${r.stderr}`);
  const map = JSON.parse(r.stdout) as { offset: number; length: number; type: number }[];
  let end = 0;
  const dirty: { offset: number; length: number }[] = [];
  for (const e of map) {
    expect(e.offset).toBe(end);
    end = e.offset + e.length;
    if ((e.type & 1) !== 0) dirty.push(e);
  }
  expect(end).toBe(SIZE);
  return blocksOfRanges(dirty);
}

describe.skipIf(!haveNbdinfo)('forgetting change-tracking points (--cbt-keep-deleted)', () => {
  const dir = tempDir();
  const disk = makeSparse(join(dir.path, 'disk.img'), SIZE);
  const store = makeSparse(join(dir.path, 'store.img'), 32 * MiB);
  const rig = new Rig(dir.path, { devices: { disk }, stores: [store] });
  const model = new Model();
  afterAll(async () => {
    await rig.stop('SIGKILL');
    dir.cleanup();
  });

  /** Write 4 KiB into each block (inside it, never across), now (era nextSeq). */
  async function write(blocks: number[]): Promise<void> {
    const c = await rig.open('disk');
    for (const b of blocks) {
      const offset = Math.min(b * BS + 4 * KiB, SIZE - 4 * KiB);
      await c.write(offset, Buffer.alloc(4 * KiB, b & 0xff));
      model.mark(model.nextSeq, b);
    }
  }

  async function snapshot(name: string, writable = false): Promise<void> {
    await rig.createSnapshot('disk', name, writable);
    model.points.set(name, { seq: model.nextSeq++, snapshot: true });
  }

  /** Delete a snapshot; `forgotten`: the points the default policy (keep 1) must drop with it. */
  async function remove(name: string, forgotten: string[]): Promise<void> {
    await rig.deleteSnapshot('disk', name);
    const p = model.points.get(name);
    if (p !== undefined) p.snapshot = false;
    for (const f of forgotten) model.points.delete(f);
  }

  /** Every query between the points kept, and from each point to now, against the model. */
  async function check(): Promise<void> {
    expect(await rig.ctl<PointInfo[]>('cbt.points', { device: 'disk' })).toEqual(model.list());
    const pts = model.list();
    for (const p of pts) {
      const now = await rig.ctl<Changed>('cbt.changed', { device: 'disk', from: p.name });
      expect(blocksOfRanges(now.ranges), `${p.name} -> now`).toEqual(model.changed(p.name));
      for (const q of pts) {
        if (q.seq <= p.seq) continue;
        const r = await rig.ctl<Changed>('cbt.changed', { device: 'disk', from: p.name, to: q.name });
        expect(blocksOfRanges(r.ranges), `${p.name} -> ${q.name}`).toEqual(model.changed(p.name, q.name));
        if (q.snapshot)
          expect(dirtyMap(p.name, rig.uri(`disk@${q.name}`)), `map ${p.name} on ${q.name}`).toEqual(
            model.changed(p.name, q.name),
          );
      }
    }
  }

  /** `name` is no point any more: refused by name everywhere, never answered with a bitmap. */
  async function refused(name: string, on: string): Promise<void> {
    await expect(rig.ctl('cbt.changed', { device: 'disk', from: name })).rejects.toThrow(
      new RegExp(`no change-tracking point disk@${name} .*forgotten`),
    );
    const r = spawnSync('nbdinfo', ['--json', `--map=qemu:dirty-bitmap:${name}`, rig.uri(`disk@${on}`)], {
      encoding: 'utf8',
    });
    expect(r.status).not.toBe(0);
    expect(r.stdout).toBe('');
  }

  it('keeps the newest deleted point, forgets the one before in the same delete, answers exactly', async () => {
    await rig.start();
    await write([0, 5, 9]); // era 1
    await snapshot('s1');
    await write([1, 5, BLOCKS - 1]); // era 2
    await snapshot('s2', true);
    await write([2, 6]); // era 3
    // a write to the writable snapshot s2: it changed (era 2) and differs from what s3 holds (era 3)
    const w = await rig.open('disk@s2');
    await w.write(100 * BS, Buffer.alloc(512, 7));
    model.mark(2, 100);
    model.mark(3, 100);
    await snapshot('s3');
    await write([0, 3, 200]); // era 4
    await snapshot('s4');
    await write([4, BLOCKS - 1]); // era 5 (now)
    await check();

    await remove('s2', []);
    expect((await rig.ctl<PointInfo[]>('cbt.points', { device: 'disk' })).map((p) => p.name)).toEqual([
      's1',
      's2',
      's3',
      's4',
    ]);
    await check();
    // a connection that negotiated s2's bitmap before s2 was forgotten
    const held = await rig.open('disk@s4', ['qemu:dirty-bitmap:s2']);
    expect((await held.blockStatus(0, SIZE)).get('qemu:dirty-bitmap:s2')?.length).toBeGreaterThan(0);
    await remove('s3', ['s2']);
    await check();
    await refused('s2', 's4');
    // its block status now fails, never answering from the merged eras
    await expect(held.blockStatus(0, SIZE)).rejects.toThrow(/EIO: change-tracking point disk@s2 was forgotten/);
  });

  it('refuses a forgotten point in nbdsnap cbt and backup --since, naming it', async () => {
    const cli = await rig.cli(['cbt', 'disk@s2']);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(/no change-tracking point disk@s2 .*forgotten/);
    const b = await nbdsnap(['backup', rig.uri('disk@s4'), join(dir.path, 'inc.nbk'), '--since', 's2']);
    expect(b.code).toBe(1);
    expect(b.stderr).toMatch(/no qemu:dirty-bitmap:s2/);
  });

  it('cbt forget refuses a snapshot that exists and an unknown point; forgets a deleted one', async () => {
    const live = await rig.cli(['cbt', 'forget', 'disk', 's4']);
    expect(live.code).toBe(1);
    expect(live.stderr).toMatch(/disk@s4 is a snapshot that exists/);
    const unknown = await rig.cli(['cbt', 'forget', 'disk', 'nope']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/no change-tracking point disk@nope/);
    const gone = await rig.cli(['cbt', 'forget', 'disk', 's2']);
    expect(gone.code).toBe(1);
    const points = await rig.cli(['cbt', 'points', 'disk']);
    expect(points.code).toBe(0);
    expect(points.stdout).toMatch(/^NAME\s+POINT\s+KIND\ns1\s+1\s+snapshot\ns3\s+3\s+deleted\ns4\s+4\s+snapshot\n$/);
    const ok = await rig.cli(['cbt', 'forget', 'disk', 's3']);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toBe('forgot the change-tracking point disk@s3\n');
    model.points.delete('s3');
    await check();
    await refused('s3', 's4');
  });

  it('the state survives a clean stop', async () => {
    await rig.restart('SIGTERM');
    await check();
    await refused('s2', 's4');
    await refused('s3', 's4');
  });

  it('goes on after the restart, and survives a SIGKILL right after a delete that forgot', async () => {
    await write([7, 8, 0]); // era 5, still now
    await snapshot('s5');
    await write([9, BLOCKS - 1]); // era 6
    await remove('s1', []);
    await check();
    await remove('s4', ['s1']);
    await check();
    await rig.restart('SIGKILL');
    await check();
    await refused('s1', 's5');
    await snapshot('s6');
    await write([10]); // era 7
    await remove('s5', ['s4']);
    await check();
    await rig.restart('SIGKILL');
    await check();
    await refused('s4', 's6');
    expect(model.list().map((p) => p.name)).toEqual(['s5', 's6']);
  });

  it('refuses a new snapshot named as a kept point of a deleted one, until that point is forgotten', async () => {
    // Reusing the name would let `backup --since s5` of a backup taken at the old s5 miss changes.
    await expect(rig.createSnapshot('disk', 's5')).rejects.toThrow(
      /disk@s5 is still the change-tracking point of a deleted snapshot .*cbt forget disk s5/,
    );
    await check();
    expect((await rig.cli(['cbt', 'forget', 'disk', 's5'])).code).toBe(0);
    model.points.delete('s5');
    await snapshot('s5');
    await check();
  });

  it('a finished merge forgets the points beyond the keep, as a delete does', async () => {
    // points now: s6 and s5 (snapshots, s5 taken again); s7 is taken and deleted (the newest deleted)
    await snapshot('s7');
    await remove('s7', []);
    expect((await rig.ctl<PointInfo[]>('cbt.points', { device: 'disk' })).map((p) => [p.name, p.snapshot])).toEqual([
      ['s6', true],
      ['s5', true],
      ['s7', false],
    ]);
    // merging s6 deletes it when done: with s7 newer, keeping one deleted point forgets s6's
    await startMerge(rig, 'disk', 's6');
    await waitMergeDone(rig, 'disk@s6');
    expect((await rig.ctl<PointInfo[]>('cbt.points', { device: 'disk' })).map((p) => [p.name, p.snapshot])).toEqual([
      ['s5', true],
      ['s7', false],
    ]);
    await rig.restart('SIGKILL');
    expect((await rig.ctl<PointInfo[]>('cbt.points', { device: 'disk' })).map((p) => p.name)).toEqual(['s5', 's7']);
  });

  it('--cbt-keep-deleted must be a whole number', async () => {
    const r = await nbdsnap(['serve', disk, '--cbt-keep-deleted', '-1']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--cbt-keep-deleted -1 must be a whole number/);
  });
});
