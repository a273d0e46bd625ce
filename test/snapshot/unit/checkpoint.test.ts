/**
 * A checkpoint of the catalog as records (src/snapshot/checkpoint.ts): replayed from nothing by
 * the same `apply`, they rebuild the catalog exactly, for random histories of every record type
 * and for a recorded run of the real manager; the records survive their encoding.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Catalog } from '../../../src/snapshot/catalog.ts';
import { checkpointRecords, describeCatalog } from '../../../src/snapshot/checkpoint.ts';
import { replay } from '../../../src/snapshot/transition.ts';
import { decodeRecord, encodeRecord, type JournalRecord } from '../../../src/store/records.ts';
import { rngInt } from '../../helpers/random.ts';
import { stampedData } from '../../helpers/stamps.ts';
import { CHUNK, Harness } from './harness.ts';

/** A random history of journal records (as a run could commit them, races included). */
function history(seed: number, length: number): JournalRecord[] {
  const r = rngInt(seed);
  const devices = [
    { device: 1, size: 40 * CHUNK + 100, name: 'a' },
    { device: 2, size: 24 * CHUNK, name: 'b' },
  ];
  const out: JournalRecord[] = devices.map((d) => ({ type: 'DEVICE', ...d }));
  const snaps: { id: number; device: number; seq: number }[] = [];
  const copies: { device: number; chunk: number; slot: number }[] = [];
  let nextId = 1;
  let nextSeq = 1;
  let slot = 10;
  const pick = <T>(xs: T[]): T | undefined => (xs.length === 0 ? undefined : xs[r(xs.length)]);
  for (let i = 0; i < length; i++) {
    const op = r(100);
    const dev = (pick(devices) as { device: number }).device;
    const snap = pick(snaps);
    if (op < 10) {
      const members = (r(3) === 0 ? [1, 2] : [dev]).map((device) => ({
        snapshot: nextId++,
        device,
        seq: nextSeq++,
        writable: r(2) === 0,
      }));
      for (const m of members) snaps.push({ id: m.snapshot, device: m.device, seq: m.seq });
      out.push({ type: 'SNAPSHOT', created: 1000 + i, name: `s${r(8)}`, members });
    } else if (op < 14 && snap !== undefined) {
      out.push({ type: 'DELETE', snapshot: snap.id });
      if (r(2) === 0) snaps.splice(snaps.indexOf(snap), 1);
    } else if (op < 17 && snap !== undefined) {
      out.push({ type: 'INVALID', snapshot: snap.id, reason: `r${r(3)}` });
    } else if (op < 55) {
      const seq = snap === undefined ? r(3) + 1 : r(2) === 0 ? snap.seq : nextSeq - 1;
      const chunk = r(dev === 1 ? 41 : 24);
      copies.push({ device: dev, chunk, slot });
      out.push({ type: 'EXCEPTION', device: dev, seq, chunk, slot: slot++, crc: r(2 ** 32) });
    } else if (op < 65 && snap !== undefined) {
      const chunk = r(20);
      copies.push({ device: snap.device, chunk, slot });
      out.push({ type: 'PRIVATE', snapshot: snap.id, chunk, slot: slot++, crc: r(2 ** 32) });
    } else if (op < 69) {
      const c = pick(copies);
      if (c !== undefined) out.push({ type: 'LOST', ...c });
    } else if (op < 74 && snap !== undefined) {
      out.push({ type: 'MERGE', snapshot: snap.id, deferred: r(2) === 0 });
    } else if (op < 78 && snap !== undefined) {
      out.push({ type: 'MERGED', snapshot: snap.id, chunk: r(30), count: 1 + r(4) });
    } else if (op < 81) {
      out.push({ type: 'CBT_GEN', device: dev, blockSize: CHUNK * (1 + r(2)), generation: `g${i}` });
    } else if (op < 85) {
      // A change-tracking point forgotten (cbt forget, --cbt-keep-deleted): eras dropped or merged.
      out.push({ type: 'FORGET', device: dev, name: `s${r(8)}` });
    } else {
      out.push({ type: 'CBT', device: dev, era: 1 + r(nextSeq + 1), block: r(40), count: 1 + r(5) });
    }
  }
  return out;
}

function roundTrip(cat: Catalog): Catalog {
  const records = [...checkpointRecords(cat, 5)];
  const decoded = records.map((rec, i) => {
    const d = decodeRecord(encodeRecord(rec, i + 1), 0);
    if ('bad' in d) throw new Error(`record ${rec.type} does not decode: ${d.bad}`);
    return d.record;
  });
  expect(decoded).toEqual(records);
  return replay(decoded, cat.chunkSize);
}

describe('checkpoint records', () => {
  it.each(Array.from({ length: 60 }, (_, i) => i + 1))('rebuild a random history exactly (seed %i)', (seed) => {
    const cat = replay(history(seed, 300), CHUNK);
    const again = roundTrip(cat);
    expect(describeCatalog(again)).toEqual(describeCatalog(cat));
    expect(new Set(again.usedSlots())).toEqual(new Set(cat.usedSlots()));
    // A checkpoint of a checkpoint is the same checkpoint.
    expect([...checkpointRecords(again, 5)]).toEqual([...checkpointRecords(cat, 5)]);
  });

  it('the histories reach every kind of state', () => {
    const cats = Array.from({ length: 60 }, (_, i) => replay(history(i + 1, 300), CHUNK));
    const all = cats.flatMap((c) => [...c.snapshots.values()]);
    expect(all.some((s) => s.state === 'invalid')).toBe(true);
    expect(all.some((s) => s.state === 'merging')).toBe(true);
    expect(all.some((s) => s.mergeScheduled === true)).toBe(true);
    expect(all.some((s) => [...s.privateChunks.values()].some((c) => c.lost))).toBe(true);
    expect(cats.some((c) => [...c.origins.values()].some((o) => [...o.table.entries()].some(([, v]) => v.lost)))).toBe(
      true,
    );
    expect(cats.some((c) => [...c.merges.values()].some((m) => m.merged.size > 0 && (m.chunks?.length ?? 0) > 0))).toBe(
      true,
    );
    // Points of deleted snapshots, and snapshots older than their device's tracking generation.
    expect(
      cats.some((c) => [...c.bookmarks.values()].some((marks) => marks.size > 0)) &&
        cats.some((c) => [...c.snapshots.values()].some((s) => !c.bookmarks.get(s.origin.id)?.has(s.name))),
    ).toBe(true);
    expect(cats.some((c) => [...c.trackers.values()].some((t) => [...t.eraRuns()].length > 1))).toBe(true);
  });

  it('a merge keeps its chunk list, split over several MERGE_PLAN records', () => {
    const chunks = Array.from({ length: 900 }, (_, i) => i * 2); // 900 runs of one chunk
    const cat = replay(
      [
        { type: 'DEVICE', device: 1, size: 2000 * CHUNK, name: 'a' },
        { type: 'SNAPSHOT', created: 1, name: 's', members: [{ snapshot: 1, device: 1, seq: 1, writable: false }] },
        ...chunks.map(
          (chunk, i): JournalRecord => ({ type: 'EXCEPTION', device: 1, seq: 1, chunk, slot: 10 + i, crc: 0 }),
        ),
        { type: 'MERGE', snapshot: 1, deferred: false },
        // A copy made after the merge began (for a newer snapshot) is not merged.
        { type: 'SNAPSHOT', created: 2, name: 't', members: [{ snapshot: 2, device: 1, seq: 2, writable: false }] },
        { type: 'EXCEPTION', device: 1, seq: 2, chunk: 1, slot: 5000, crc: 0 },
      ],
      CHUNK,
    );
    const records = [...checkpointRecords(cat)];
    const plans = records.filter((r) => r.type === 'MERGE_PLAN');
    expect(plans.length).toBeGreaterThan(1);
    for (const p of plans) expect(encodeRecord(p, 1).length).toBeLessThanOrEqual(CHUNK / 2 + 28);
    expect(replay(records, CHUNK).merges.get(1)?.chunks).toEqual(chunks);
  });
});

describe('checkpoint of a recorded run', () => {
  let h: Harness | undefined;
  afterEach(() => {
    vi.restoreAllMocks();
    h?.close();
  });

  it('rebuilds the state the run had in memory', async () => {
    const run = new Harness({ devices: { a: 64 * CHUNK, b: 32 * CHUNK }, slots: 120, cbtBlockSize: CHUNK });
    h = run;
    await run.start();
    const m = run.manager;
    const write = (dev: string, chunk: number, n: number, seed: number) =>
      run.device(dev).write(chunk * CHUNK + 100, stampedData(seed, chunk * CHUNK + 100, n * CHUNK - 200), false);
    await m.createSnapshot(['a', 'b'], 'g1', false);
    await Promise.all([write('a', 0, 10, 1), write('b', 5, 3, 2)]);
    await m.createSnapshot(['a'], 'w', true);
    await run.device('a@w').write(20 * CHUNK + 5, stampedData(3, 20 * CHUNK + 5, CHUNK + 10), false);
    await write('a', 19, 4, 4);
    await m.createSnapshot(['a'], 's3', false);
    await Promise.all([write('a', 0, 4, 5), write('a', 30, 2, 6)]);
    await m.deleteSnapshot('a', 'g1');
    await m.startMerge('b', 'g1', true);
    await m.createSnapshot(['b'], 'full', false);
    await write('b', 0, 2, 8);
    const cat = m.catalog;
    expect(describeCatalog(replay(run.committed, CHUNK))).toEqual(describeCatalog(cat));
    expect(describeCatalog(roundTrip(cat))).toEqual(describeCatalog(cat));
  });
});
