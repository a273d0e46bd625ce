/**
 * I/O errors during a merge, and the merge's own exclusions, in process: the snapshot layers are
 * built directly (as the server builds them) on a wrapper device that answers EIO where told,
 * with the store's reads, syncs and commits wrapped the same way (test/snapshot/ordering.test.ts
 * does the same).
 * - a store read error, or an origin write error, stops the merge: state 'failed', the chunk
 *   that failed and the error, a merge-failed event; nothing is lost (the origin still reads
 *   as the snapshot, client writes still land), and `merge` again completes it;
 * - a failed journal commit (the store is then failed until restart): after the restart the
 *   merge resumes from its records and completes, the merged snapshot is not invalidated;
 * - while a merge runs: another merge of the device, a snapshot of it, deleting the merging
 *   snapshot are refused; merging it again just reports it;
 * - a write to the snapshot in flight when its merge starts is in the merge, wholly.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { type BlockDevice, Layer, type ZeroOptions } from '../../src/block/device.ts';
import { FileDevice } from '../../src/block/file-device.ts';
import { NbdsnapError } from '../../src/errors.ts';
import { Logger } from '../../src/log.ts';
import { ExportRegistry } from '../../src/server/exports.ts';
import type { TimedEvent } from '../../src/snapshot/events.ts';
import { SnapshotManager } from '../../src/snapshot/manager.ts';
import type { JournalRecord } from '../../src/store/records.ts';
import { StoreSpace } from '../../src/store/space.ts';
import type { DiffStore } from '../../src/store/store.ts';
import type { MergeProgress } from '../helpers/merge.ts';
import { assertSame, KiB, MiB, makeImage, makeSparse, outcome, TRIM_ZEROES, tempDir } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

const SIZE = 4 * MiB;
const CHUNK = 4 * KiB;
const dir = tempDir('nbdsnap-merge-fail-');
afterAll(() => dir.cleanup());

/** A device that answers EIO to writes or reads of the ranges `failWrite` / `failRead` pick. */
class FaultyDevice extends Layer {
  failWrite: ((offset: number, length: number) => boolean) | undefined;
  failRead: ((offset: number, length: number) => boolean) | undefined;
  private check(fail: ((o: number, l: number) => boolean) | undefined, what: string, o: number, l: number) {
    if (fail?.(o, l)) throw new NbdsnapError('EIO', `injected ${what} error at [${o}, +${l})`);
  }
  override read(offset: number, length: number): Promise<Buffer> {
    this.check(this.failRead, 'read', offset, length);
    return this.next.read(offset, length);
  }
  override write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.check(this.failWrite, 'write', offset, data.length);
    return this.next.write(offset, data, fua);
  }
  override writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    this.check(this.failWrite, 'write', offset, length);
    return this.next.writeZeroes(offset, length, options);
  }
}

const touches = (chunk: number) => (o: number, l: number) => o < (chunk + 1) * CHUNK && chunk * CHUNK < o + l;

interface Setup {
  manager: SnapshotManager;
  registry: ExportRegistry;
  faulty: FaultyDevice;
  origin: BlockDevice;
  store: DiffStore;
  events: TimedEvent[];
  close(): Promise<void>;
}

/** The manager over `name`.img and its store (created on first use), as `serve` builds it. */
async function open(name: string): Promise<Setup> {
  const image = join(dir.path, `${name}.img`);
  const storePath = join(dir.path, `${name}.store`);
  if (!existsSync(image)) {
    makeImage(image, stampedImage(SIZE, 0));
    makeSparse(storePath, 32 * MiB);
  }
  const file = await FileDevice.open(image);
  const faulty = new FaultyDevice(file);
  const registry = new ExportRegistry();
  const manager = new SnapshotManager(registry, new Logger('silent'), {
    devices: [{ name: 'disk', device: faulty, description: '' }],
    store: [StoreSpace.resolve(storePath)],
    chunkSize: CHUNK,
    transient: false,
    lowSpacePercent: 10,
    readOnlyOrigins: false,
    cbtBlockSize: 0,
  });
  const events: TimedEvent[] = [];
  manager.events.subscribe((e) => events.push(e));
  await manager.start();
  const origin = registry.get('disk')?.device;
  if (origin === undefined) throw new Error('no origin export');
  return {
    manager,
    registry,
    faulty,
    origin,
    store: manager.store as DiffStore,
    events,
    close: async () => {
      await manager.close();
      await file.close();
    },
  };
}

/** Snapshot `name`, then rewrite chunks [0, 300) in a few large writes; returns the snapshot's content. */
async function snapshotAndChange(s: Setup, name: string, model: Buffer, seq: number, writable = false) {
  await s.manager.createSnapshot(['disk'], name, writable);
  const snap = Buffer.from(model);
  for (let c = 0; c < 300; c += 50) {
    const data = stampedData(seq + c, c * CHUNK + 100, 50 * CHUNK - 200);
    await s.origin.write(c * CHUNK + 100, data, false);
    data.copy(model, c * CHUNK + 100);
  }
  return snap;
}

async function until(s: Setup, test: (p: MergeProgress[]) => boolean): Promise<MergeProgress[]> {
  for (let i = 0; ; i++) {
    const p = s.manager.mergeStatus() as MergeProgress[];
    if (test(p)) return p;
    if (i > 3000) throw new Error(`merge status never got there: ${JSON.stringify(p)}`);
    await sleep(5);
  }
}

/** Holds the merge in its first run (its reads of whole chunks, or runs of them, from the store) until `go()`. */
function holdMerge(s: Setup): { reached: Promise<void>; go(): void } {
  const readSlot = s.store.readSlot.bind(s.store);
  let go!: () => void;
  const held = new Promise<void>((r) => {
    go = r;
  });
  let reached!: () => void;
  const first = new Promise<void>((r) => {
    reached = r;
  });
  s.store.readSlot = async (slot: number, length: number, offset = 0) => {
    if (length >= CHUNK && offset === 0) {
      reached();
      await held;
    }
    return readSlot(slot, length, offset);
  };
  return { reached: first, go };
}

/** Reads of the whole origin, chunk by chunk: content where readable, and the chunks that fail. */
async function readChunks(origin: BlockDevice): Promise<{ data: Buffer; failed: number[] }> {
  const data = Buffer.alloc(SIZE);
  const failed: number[] = [];
  for (let c = 0; c < SIZE / CHUNK; c++) {
    try {
      (await origin.read(c * CHUNK, CHUNK)).copy(data, c * CHUNK);
    } catch {
      failed.push(c);
    }
  }
  return { data, failed };
}

describe('errors during a merge', () => {
  it('a store read error fails the merge at that chunk, loses nothing, and a retry completes', async () => {
    const s = await open('read');
    const model = stampedImage(SIZE, 0);
    const snap = await snapshotAndChange(s, 'm', model, 1);
    const m = s.manager.find('disk', 'm');
    const src = m.origin.table.resolve(100, m);
    if (src.from !== 'store') throw new Error('chunk 100 is not in the store');
    const readSlot = s.store.readSlot.bind(s.store);
    let broken = true;
    s.store.readSlot = async (slot: number, length: number, offset = 0) => {
      // A read error on every read that covers the copy's slot (the merge reads neighbouring slots at once).
      if (broken && slot <= src.slot && src.slot < slot + Math.ceil((offset + length) / CHUNK))
        throw new NbdsnapError('EIO', 'injected store read error');
      return readSlot(slot, length, offset);
    };
    await s.manager.startMerge('disk', 'm', false);
    const [p] = await until(s, (l) => l[0]?.state === 'failed');
    expect(p).toMatchObject({ snapshot: 'disk@m', state: 'failed', failedChunk: 100 });
    expect(p?.error).toContain('injected store read error');
    expect(s.events.filter((e) => e.type === 'merge-failed')).toMatchObject([
      { snapshot: 'disk@m', chunk: 100, error: expect.stringContaining('injected store read error') },
    ]);
    // The origin still reads as the snapshot; only the unreadable copy answers EIO.
    const now = await readChunks(s.origin);
    expect(now.failed).toEqual([100]);
    snap.copy(now.data, 100 * CHUNK, 100 * CHUNK, 101 * CHUNK);
    assertSame(now.data, snap, 'origin after the failure');
    // Client writes go on, to merged and unmerged chunks alike.
    const write = stampedData(1000, 250 * CHUNK + 10, 3 * CHUNK);
    await s.origin.write(250 * CHUNK + 10, write, false);
    write.copy(snap, 250 * CHUNK + 10);
    expect(await outcome(s.origin.write(100 * CHUNK, Buffer.alloc(10), false))).toBe('EIO');
    expect(s.manager.list().map((x) => `${x.name}:${x.state}`)).toEqual(['m:merging']);

    broken = false;
    expect(await s.manager.startMerge('disk', 'm', false)).toMatchObject({ state: 'merging' });
    await until(s, (l) => l.length === 0);
    assertSame(await s.origin.read(0, SIZE), snap, 'origin after the retry');
    expect(s.manager.list()).toEqual([]);
    expect(s.events.map((e) => e.type).filter((t) => t.startsWith('merge-'))).toEqual([
      'merge-started',
      'merge-failed',
      'merge-finished',
    ]);
    await s.close();
  });

  it('an origin write error fails the merge at that chunk, loses nothing, and a retry completes', async () => {
    const s = await open('write');
    const model = stampedImage(SIZE, 0);
    const snap = await snapshotAndChange(s, 'm', model, 1);
    s.faulty.failWrite = touches(77);
    await s.manager.startMerge('disk', 'm', false);
    const [p] = await until(s, (l) => l[0]?.state === 'failed');
    expect(p).toMatchObject({
      state: 'failed',
      failedChunk: 77,
      error: expect.stringContaining('injected write error'),
    });
    assertSame(await s.origin.read(0, SIZE), snap, 'origin after the failure');
    s.faulty.failWrite = undefined;
    await s.manager.startMerge('disk', 'm', false);
    await until(s, (l) => l.length === 0);
    assertSame(await s.origin.read(0, SIZE), snap, 'origin after the retry');
    await s.close();
  });

  it('a failed journal commit: after a restart the merge resumes and completes', async () => {
    const s = await open('commit');
    const model = stampedImage(SIZE, 0);
    const snap = await snapshotAndChange(s, 'm', model, 1);
    await s.manager.createSnapshot(['disk'], 'other', false);
    const space = s.store.space;
    const sync = space.sync.bind(space);
    let merged = 0;
    space.sync = async () => {
      if (merged >= 3) throw new NbdsnapError('EIO', 'injected sync error');
      return sync();
    };
    const commit = s.store.commit.bind(s.store);
    s.store.commit = async (records: JournalRecord[]) => {
      if (records.some((r) => r.type === 'MERGED')) merged++;
      return commit(records);
    };
    await s.manager.startMerge('disk', 'm', false);
    const [p] = await until(s, (l) => l[0]?.state === 'failed');
    expect(p?.error).toContain('injected sync error');
    assertSame(await s.origin.read(0, SIZE), snap, 'origin after the failure');
    await s.close();

    const again = await open('commit');
    assertSame(await again.origin.read(0, SIZE), snap, 'origin after the restart');
    await until(again, (l) => l.length === 0);
    assertSame(await again.origin.read(0, SIZE), snap, 'origin once the resumed merge is done');
    // The other snapshot could not be proven exact after the failed commit: invalid.
    expect(again.manager.list().map((x) => `${x.name}:${x.state}`)).toEqual(['other:invalid']);
    await again.close();
  });
});

describe('while a merge runs', () => {
  it('refuses another merge, a snapshot, deleting the merging one', async () => {
    const s = await open('busy');
    const model = stampedImage(SIZE, 0);
    await s.manager.createSnapshot(['disk'], 'older', false);
    const older = Buffer.from(model);
    const snap = await snapshotAndChange(s, 'm', model, 1);
    const release = holdMerge(s);
    await s.manager.startMerge('disk', 'm', false);
    await release.reached;
    expect(await outcome(s.manager.startMerge('disk', 'older', false))).toBe('BUSY');
    expect(await outcome(s.manager.startMerge('disk', 'older', true))).toBe('BUSY');
    expect(await outcome(s.manager.createSnapshot(['disk'], 'x', false))).toBe('BUSY');
    expect(await outcome(s.manager.deleteSnapshot('disk', 'm'))).toBe('BUSY');
    expect(await s.manager.startMerge('disk', 'm', false)).toMatchObject({ snapshot: 'disk@m', state: 'merging' });
    release.go();
    await until(s, (l) => l.length === 0);
    assertSame(await s.origin.read(0, SIZE), snap, 'origin after the merge');
    expect(s.manager.list().map((x) => x.name)).toEqual(['older']);
    const olderExport = s.registry.get('disk@older');
    if (olderExport === undefined) throw new Error('no disk@older export');
    assertSame(await olderExport.device.read(0, SIZE), older, 'disk@older after the merge');
    await s.close();
  });

  it('reports no chunk still to merge as a hole in block status', async () => {
    const s = await open('extents');
    const model = stampedImage(SIZE, 0);
    await s.manager.createSnapshot(['disk'], 'm', false);
    const snap = Buffer.from(model);
    // Chunks [100, 200) become holes on the origin (copied for the snapshot first).
    await s.origin.trim(100 * CHUNK, 100 * CHUNK, false);
    const before = await s.origin.extents(0, SIZE);
    if (TRIM_ZEROES) expect(before.some((e) => (e.flags & 2) !== 0)).toBe(true);
    const release = holdMerge(s);
    await s.manager.startMerge('disk', 'm', false);
    await release.reached;
    // From anywhere, the extents reported zero never hide the snapshot's data still to merge.
    for (const from of [0, 50 * CHUNK + 3, 99 * CHUNK, 100 * CHUNK, 150 * CHUNK + 1000]) {
      let pos = from;
      while (pos < SIZE) {
        const ext = await s.origin.extents(pos, SIZE - pos);
        expect(ext.length).toBeGreaterThan(0);
        for (const e of ext) {
          if ((e.flags & 2) !== 0) {
            const zero = snap.subarray(pos, pos + e.length).every((b) => b === 0);
            expect(zero, `extent [${pos}, +${e.length}) flags ${e.flags} from ${from}`).toBe(true);
          }
          pos += e.length;
        }
      }
    }
    release.go();
    await until(s, (l) => l.length === 0);
    assertSame(await s.origin.read(0, SIZE), snap, 'origin after the merge');
    await s.close();
  });

  it('takes a write to the snapshot that was in flight when its merge started', async () => {
    const s = await open('inflight');
    const model = stampedImage(SIZE, 0);
    const w = await snapshotAndChange(s, 'w', model, 1, true);
    // Slow the snapshot's own write down at its journal record.
    const commit = s.store.commit.bind(s.store);
    s.store.commit = async (records: JournalRecord[]) => {
      if (records.some((r) => r.type === 'PRIVATE')) await sleep(100);
      return commit(records);
    };
    const entry = s.registry.get('disk@w');
    if (entry === undefined) throw new Error('no snapshot export');
    // Chunk 1000: the origin never changed it, so only this write puts it in the store.
    const data = stampedData(5000, 1000 * CHUNK + 7, 300);
    const writing = outcome(entry.device.write(1000 * CHUNK + 7, data, false));
    await sleep(10);
    await s.manager.startMerge('disk', 'w', false);
    expect(await writing).toBe('ok');
    data.copy(w, 1000 * CHUNK + 7);
    assertSame(await s.origin.read(0, SIZE), w, 'origin as the merge begins');
    await until(s, (l) => l.length === 0);
    assertSame(await s.origin.read(0, SIZE), w, 'origin after the merge');
    await s.close();
  });
});
