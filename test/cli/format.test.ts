/**
 * The human listings of `status`, `snapshot list`, `store status`, `merge status` and `cbt`, as
 * pure functions of the server's answer: every figure the server may leave out (a scheduled
 * merge has no progress; an older server sends no exclusive sizes) is shown as "-" or left out,
 * never as `undefined` or `NaN`.
 */
import { describe, expect, it } from 'vitest';
import { cbtHuman, pointsHuman } from '../../src/cli/cbt-command.ts';
import {
  mergeLine,
  type SnapInfo,
  type StatusInfo,
  type StoreInfo,
  snapshotsHuman,
  statusHuman,
  storeHuman,
} from '../../src/cli/control-commands.ts';

const snapshot: SnapInfo = {
  export: 'disk@a',
  state: 'valid',
  writable: false,
  created: '2026-01-01T00:00:00.000Z',
  chunksInStore: 3,
  chunkSize: 65536,
};
const store: StoreInfo = {
  chunkSize: 65536,
  transient: false,
  totalBytes: 64 * 1048576,
  usedBytes: 3 * 65536,
  freeBytes: 60 * 1048576,
  journalBytes: 65536,
  ranges: [{ path: '/s.img', startSector: 0, sectors: 131072, slots: 1000 }],
  perSnapshot: [{ snapshot: 'disk@a', bytes: 3 * 65536 }],
};
const clean = (text: string) => expect(text).not.toMatch(/undefined|NaN|null|\[object/);

describe('human listings', () => {
  it('merges: scheduled, running, failed with or without figures', () => {
    expect(mergeLine({ snapshot: 'disk@a', state: 'scheduled for next start' })).toBe(
      'disk@a: scheduled for next start',
    );
    expect(mergeLine({ snapshot: 'disk@a', state: 'merging', merged: 1, total: 4, bytesPerSecond: 2097152 })).toBe(
      'disk@a: merging, 1/4 chunks merged, 2.0 MiB/s',
    );
    expect(mergeLine({ snapshot: 'disk@a', state: 'failed', merged: 1, total: 4, failedChunk: 7, error: 'EIO' })).toBe(
      'disk@a: failed, 1/4 chunks merged, stopped at chunk 7: EIO',
    );
    expect(mergeLine({ snapshot: 'disk@a', state: 'failed' })).toBe('disk@a: failed, stopped');
  });

  it('status with a scheduled merge', () => {
    const r: StatusInfo = {
      devices: [{ name: 'disk', size: 4194304, chunkSize: 65536, snapshots: 1 }],
      snapshots: [snapshot],
      store,
      merges: [{ snapshot: 'disk@a', state: 'scheduled for next start' }],
    };
    const text = statusHuman(r);
    clean(text);
    expect(text).toContain('\nmerge disk@a: scheduled for next start\n');
    clean(statusHuman({ ...r, store: null, merges: undefined as never }));
  });

  it('snapshot list and store status without the exclusive sizes', () => {
    const list = snapshotsHuman([snapshot]);
    clean(list);
    expect(list.split('\n')[1]).toMatch(/^disk@a\s+valid\s+ro\s+\S+\s+0\.2 MiB\s+-$/);
    const text = storeHuman(store);
    clean(text);
    expect(text.split('\n').at(-1)).toMatch(/^disk@a\s+0\.2 MiB\s+-$/);
    expect(snapshotsHuman([])).toBe('no snapshots');
  });

  it('cbt of an empty device', () => {
    const lines = cbtHuman({
      device: 'disk',
      from: 'a',
      to: '(origin now)',
      generation: 'g1',
      blockSize: 65536,
      ranges: [],
      changedBytes: 0,
      deviceBytes: 0,
    });
    for (const l of lines) clean(l);
    expect(lines).toEqual(['# disk@a -> (origin now): 0 ranges, 0 bytes changed, block 65536, generation g1']);
  });

  it('cbt points: a table oldest first, or a line when there is none', () => {
    const lines = pointsHuman('disk', [
      { name: 'mon', seq: 3, snapshot: false },
      { name: 'daily-2026-12-01', seq: 12, snapshot: true },
    ]);
    for (const l of lines) clean(l);
    expect(lines).toEqual([
      'NAME               POINT  KIND',
      'mon                    3  deleted',
      'daily-2026-12-01      12  snapshot',
    ]);
    expect(pointsHuman('disk', [])).toEqual(['# disk: no change-tracking points']);
  });
});
