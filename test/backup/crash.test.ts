/**
 * Crashes lose no tracking and leave no short backups:
 * - the server SIGKILLed while writes are in flight (after others were acknowledged with FUA
 *   and a flush): after a restart the next incremental still holds every acknowledged change,
 *   and full + incremental restore to exactly what the snapshot after the restart holds;
 * - the server SIGKILLed while a backup runs, and the backup process itself SIGKILLed: no file
 *   ever appears under the final name, and the retried backup yields a correct chain.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/backup.ts';
import { restore } from '../../src/backup/restore.ts';
import { CommandFlag } from '../../src/nbd-protocol/index.ts';
import { type Background, background } from '../helpers/clients.ts';
import { CLI, tempDir } from '../helpers/server.ts';
import { BackupRig, BLOCK, dirtyBlocksOf, firstDiff, KiB, MiB, nbdinfoMap, prng, randomBuffer } from './rig.ts';

const dirs: { cleanup(): void }[] = [];
const rigs: BackupRig[] = [];
afterAll(async () => {
  for (const r of rigs) await r.stop('SIGKILL');
  for (const d of dirs) d.cleanup();
});

function setup(size: number, content?: Buffer): { rig: BackupRig; dir: string; file: (n: string) => string } {
  const dir = tempDir('nbdsnap-backup-crash-');
  dirs.push(dir);
  const rig = new BackupRig(dir.path, content === undefined ? { size } : { size, content });
  rigs.push(rig);
  return { rig, dir: dir.path, file: (n) => join(dir.path, n) };
}

describe('crash during tracked writes', () => {
  it('the next incremental after a SIGKILL holds every acknowledged change', async () => {
    const SIZE = 16 * MiB;
    const HALF = SIZE / 2;
    const rnd = prng(99);
    const { rig, file } = setup(SIZE);
    await rig.start();
    await rig.write(0, randomBuffer(rnd, 4 * MiB));
    await rig.snapshot('s0');
    await backup({ source: rig.uri('disk@s0'), file: file('full.nbk') });

    // acknowledged: FUA writes (and one flush) in the first half
    for (let i = 0; i < 40; i++) {
      const len = 512 + Math.floor(rnd() * 128 * KiB);
      await rig.write(Math.floor(rnd() * (HALF - len)), randomBuffer(rnd, len));
    }
    // and one plain write made durable by FLUSH
    const disk = await rig.disk();
    const flushed = randomBuffer(rnd, BLOCK);
    await disk.write(HALF - BLOCK, flushed);
    await disk.flush();
    flushed.copy(rig.model, HALF - BLOCK);
    const acked = Buffer.from(rig.model.subarray(0, HALF));
    // in flight when the server dies: writes to the second half, never acknowledged
    const inflight = Array.from({ length: 64 }, (_, i) =>
      disk.write(HALF + i * 97 * KiB, randomBuffer(rnd, 96 * KiB), CommandFlag.FUA).catch(() => undefined),
    );
    await rig.stop('SIGKILL');
    await Promise.all(inflight);
    await rig.start();
    await rig.snapshot('s1');
    const s1 = await rig.readAll('disk@s1');
    // every acknowledged byte survived
    expect(firstDiff(s1.subarray(0, HALF), acked)).toBeUndefined();

    // the dirty bitmap covers every block an acknowledged write touched
    const dirty = dirtyBlocksOf(nbdinfoMap('qemu:dirty-bitmap:s0', rig.uri('disk@s1')), SIZE);
    for (const b of rig.changedBlocks('s0', 's1')) expect(dirty.has(b), `block ${b}`).toBe(true);
    expect(dirty.has((HALF - BLOCK) / BLOCK)).toBe(true);

    // full + incremental == what the snapshot after the restart holds, byte for byte
    await backup({ source: rig.uri('disk@s1'), file: file('inc.nbk'), since: file('full.nbk') });
    await restore({ files: [file('full.nbk'), file('inc.nbk')], target: file('restored.img') });
    expect(firstDiff(readFileSync(file('restored.img')), s1)).toBeUndefined();
  });
});

/** `nbdsnap backup` in the background with JSON progress. */
function startBackup(source: string, dest: string): Background {
  return background(process.execPath, [CLI, 'backup', source, dest, '--progress=json']);
}

/** Resolves once the backup has reported progress past the start. */
async function firstProgress(bg: Background): Promise<void> {
  for (;;) {
    const moved = bg
      .output()
      .split('\n')
      .some((l) => l.startsWith('{"type":"progress"') && (JSON.parse(l) as { done: number }).done > 0);
    if (moved) return;
    if (bg.child.exitCode !== null) throw new Error(`backup exited early:\n${bg.output()}`);
    await sleep(5);
  }
}

const partials = (dir: string, name: string) => readdirSync(dir).filter((f) => f.startsWith(`${name}.partial.`));

describe('interrupted backups', () => {
  it('server killed half-way, then the backup process killed: retries give a correct chain', async () => {
    const SIZE = 64 * MiB;
    const rnd = prng(5);
    const content = randomBuffer(rnd, SIZE);
    const { rig, dir, file } = setup(SIZE, content);
    await rig.start();
    await rig.snapshot('s0');

    // 1. the server dies while the backup reads: stop both at the first progress, so the
    //    backup cannot get further than what the server had already sent
    const bg = startBackup(rig.uri('disk@s0'), file('full.nbk'));
    await firstProgress(bg);
    process.kill(rig.server?.pid as number, 'SIGSTOP');
    process.kill(bg.child.pid as number, 'SIGSTOP');
    expect(existsSync(file('full.nbk'))).toBe(false);
    expect(partials(dir, 'full.nbk')).toHaveLength(1);
    await rig.stop('SIGKILL');
    process.kill(bg.child.pid as number, 'SIGCONT');
    expect(await bg.exited).not.toBe(0);
    expect(bg.output()).toMatch(
      /nbdsnap: error: backup of disk@s0 failed, .*full\.nbk not written: .*connection (closed by|to) the server/,
    );
    expect(existsSync(file('full.nbk'))).toBe(false);
    expect(partials(dir, 'full.nbk')).toEqual([]); // removed by the failing backup

    // 2. after a restart the retry succeeds
    await rig.start();
    await backup({ source: rig.uri('disk@s0'), file: file('full.nbk') });

    // 3. the backup process itself killed half-way: only a .partial file is left behind
    await rig.write(5 * MiB + 3, randomBuffer(rnd, 300 * KiB));
    await rig.zero(40 * MiB, 2 * MiB);
    await rig.snapshot('s1');
    const bg2 = startBackup(rig.uri('disk@s1'), file('full-s1.nbk'));
    await firstProgress(bg2);
    bg2.kill('SIGKILL');
    await bg2.exited;
    expect(existsSync(file('full-s1.nbk'))).toBe(false);
    expect(partials(dir, 'full-s1.nbk')).toHaveLength(1);

    // 4. the incremental since the last backup that completed covers everything since s0
    await backup({ source: rig.uri('disk@s1'), file: file('inc1.nbk'), since: file('full.nbk') });
    await restore({ files: [file('full.nbk'), file('inc1.nbk')], target: file('restored.img') });
    expect(firstDiff(readFileSync(file('restored.img')), rig.snap('s1'))).toBeUndefined();
    expect(firstDiff(rig.snap('s0'), content)).toBeUndefined();
  });
});
