/**
 * The ordered tree over copied and private chunks, against brute-force models: the tree alone
 * (adds, removals, rising and falling weights between queries, 32-bit and wider chunk numbers),
 * the exception table's "next chunk this snapshot reads from the store" with versioned copies,
 * pruning, lost copies and private chunks, and a snapshot's block status built on it (both
 * contexts) against a byte-exact model, with ranges that start and end inside chunks and a short
 * last chunk.
 */
import { describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../../src/block/device.ts';
import type { Extent } from '../../../src/nbd-protocol/index.ts';
import { ChunkTree } from '../../../src/snapshot/chunk-tree.ts';
import { copyOf, ExceptionTable, PrivateChunks, type SnapshotRef } from '../../../src/snapshot/exception-table.ts';
import { OriginState, type Snapshot } from '../../../src/snapshot/model.ts';
import { SnapshotDevice } from '../../../src/snapshot/snapshot-device.ts';
import type { DiffStore } from '../../../src/store/store.ts';
import { rngInt } from '../../helpers/random.ts';

function bruteNext(model: Map<number, number>, from: number, min: number): number | undefined {
  let best: number | undefined;
  for (const [k, w] of model) if (k >= from && w >= min && (best === undefined || k < best)) best = k;
  return best;
}

describe('ChunkTree', () => {
  it('answers "first chunk at or after C with weight at least W" like a brute-force scan', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const r = rngInt(seed);
      const model = new Map<number, number>();
      const tree = new ChunkTree(3, [4, 8, 512, 5][seed % 4]);
      // Some cases use chunk numbers past 2^32 (leaves widen to 64-bit keys).
      const base = seed % 5 === 0 ? 2 ** 32 - 50 : 0;
      const span = [20, 200, 5000][seed % 3] as number;
      for (let step = 0; step < 250; step++) {
        const op = r(10);
        const c = base + r(span);
        if (op < 4) {
          const w = 1 + r(8);
          const h = tree.find(c);
          if (h < 0) tree.insert(c, w, c % 1000, 7);
          else tree.setVal(h, 0, w); // a weight that rises or falls
          model.set(c, w);
        } else if (op < 6) {
          expect(tree.delete(c)).toBe(model.delete(c));
        } else if (op === 6 && r(40) === 0) {
          model.clear();
          tree.clear();
        } else {
          const from = base + r(span + 2) - 1;
          const min = r(10);
          const h = tree.next(Math.max(0, from), min);
          expect(h < 0 ? undefined : tree.key(h), `seed ${seed} step ${step}`).toBe(
            bruteNext(model, Math.max(0, from), min),
          );
          if (h >= 0) {
            // The run of consecutive keys of weight >= min from there.
            let end = tree.key(h) + 1;
            while ((model.get(end) ?? 0) >= min && model.has(end)) end += 1;
            expect(tree.runEnd(h, min), `seed ${seed} step ${step} run`).toBe(end);
          }
        }
      }
      const got: (number | undefined)[] = [];
      const want: (number | undefined)[] = [];
      for (let from = Math.max(0, base - 1); from <= base + span; from += 1 + r(Math.ceil(span / 50)))
        for (let min = 0; min <= 9; min++) {
          const h = tree.next(from, min);
          got.push(h < 0 ? undefined : tree.key(h));
          want.push(bruteNext(model, from, min));
        }
      expect(got, `seed ${seed}`).toEqual(want);
      expect(tree.size).toBe(model.size);
      // Walking every entry in order gives exactly the keys held, with their values.
      const walked: [number, number][] = [];
      for (let h = tree.next(0); h >= 0; h = tree.following(h)) walked.push([tree.key(h), tree.val(h, 0)]);
      expect(walked).toEqual([...model].sort((a, b) => a[0] - b[0]));
    }
  });

  it('handles many adds between queries', () => {
    const model = new Map<number, number>();
    const tree = new ChunkTree(3);
    const r = rngInt(7);
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 3000; i++) {
        const c = r(1_000_000);
        if (!model.has(c)) {
          const w = 1 + r(4);
          model.set(c, w);
          tree.insert(c, w);
        }
      }
      for (let q = 0; q < 200; q++) {
        const from = r(1_000_000);
        const min = r(6);
        const h = tree.next(from, min);
        expect(h < 0 ? undefined : tree.key(h)).toBe(bruteNext(model, from, min));
      }
    }
    expect(tree.size).toBe(model.size);
  });
});

/** Whether `snap` reads `chunk` from the store, by the table's own resolve. */
const storedByResolve = (t: ExceptionTable, chunk: number, s: SnapshotRef) => t.resolve(chunk, s).from === 'store';

describe('ExceptionTable.nextStored', () => {
  it('finds the next chunk each snapshot reads from the store, as resolve says chunk by chunk', () => {
    for (let seed = 1; seed <= 400; seed++) {
      const r = rngInt(1000 + seed);
      const t = new ExceptionTable();
      const span = [16, 100, 1000][seed % 3] as number;
      const snaps: SnapshotRef[] = [1, 2, 3, 4, 5].map((seq) => ({ seq, privateChunks: new PrivateChunks() }));
      let slot = 0;
      for (let step = 0; step < 150; step++) {
        const op = r(12);
        const c = r(span);
        const s = snaps[r(snaps.length)] as SnapshotRef;
        if (op < 5) {
          // A first write while snapshot `seq` was the newest: a copy versioned `seq`.
          if (t.latest(c) < s.seq) t.add(c, s.seq, slot++, 0);
        } else if (op < 7) {
          s.privateChunks.set(c, copyOf(slot++, 0));
        } else if (op === 7) {
          s.privateChunks.delete(c);
        } else if (op === 8) {
          const first = t.find(c, 0); // the chunk's oldest copy
          if (first !== undefined) t.remove(c, first.slot);
        } else if (op === 9) {
          // A snapshot deleted: prune copies no remaining snapshot reads; lost copies stay.
          const live = snaps.filter(() => r(3) > 0);
          t.prune(live, () => undefined);
          t.lose(c, slot - 1, snaps);
        } else {
          const from = r(span + 1);
          let want: number | undefined;
          for (let k = from; k < span; k++)
            if (storedByResolve(t, k, s)) {
              want = k;
              break;
            }
          expect(t.nextStored(from, s), `seed ${seed} step ${step}`).toBe(want);
          expect(t.readsStore(from, s)).toBe(storedByResolve(t, from, s));
        }
      }
      const got: (number | undefined)[] = [];
      const want: (number | undefined)[] = [];
      for (const s of snaps) {
        // The brute-force answer for every `from`, in one backward sweep of resolve.
        const next: (number | undefined)[] = [];
        for (let k = span - 1; k >= 0; k--) next[k] = storedByResolve(t, k, s) ? k : next[k + 1];
        for (let from = 0; from <= span; from++) {
          got.push(t.nextStored(from, s));
          want.push(next[from]);
        }
      }
      expect(got, `seed ${seed}`).toEqual(want);
    }
  });

  it('works with a plain Map of private chunks too', () => {
    const t = new ExceptionTable();
    t.add(10, 1, 0, 0);
    const s: SnapshotRef = { seq: 1, privateChunks: new Map([[4, copyOf(1, 0)]]) };
    expect(t.nextStored(0, s)).toBe(4);
    expect(t.nextStored(5, s)).toBe(10);
    expect(t.nextStored(11, s)).toBeUndefined();
    expect(t.nextStored(0, { seq: 2, privateChunks: new Map() })).toBeUndefined();
  });

  it('a PrivateChunks map built with entries is indexed', () => {
    const p = new PrivateChunks();
    for (const c of [9, 3, 6]) p.set(c, copyOf(c, 0));
    expect([p.next(0), p.next(4), p.next(7), p.next(10)]).toEqual([3, 6, 9, undefined]);
    p.clear();
    expect(p.next(0)).toBeUndefined();
  });
});

/** Byte-exact model of a snapshot's block status: split at chunk and origin-extent bounds. */
function modelExtents(
  t: ExceptionTable,
  s: SnapshotRef,
  origin: Extent[],
  chunkSize: number,
  offset: number,
  end: number,
  storeFlag: number,
  originFlag: (f: number) => number,
): Extent[] {
  const cuts = new Set<number>([offset, end]);
  for (let b = Math.ceil(offset / chunkSize) * chunkSize; b < end; b += chunkSize) cuts.add(b);
  let at = 0;
  for (const e of origin) {
    if (at > offset && at < end) cuts.add(at);
    at += e.length;
  }
  const points = [...cuts].sort((a, b) => a - b);
  const out: Extent[] = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const a = points[i] as number;
    const b = points[i + 1] as number;
    const flags = t.readsStore(Math.floor(a / chunkSize), s) ? storeFlag : originFlag(flagAt(origin, a));
    push(out, b - a, flags);
  }
  return out;
}

function flagAt(origin: Extent[], pos: number): number {
  let at = 0;
  for (const e of origin) {
    if (pos < at + e.length) return e.flags;
    at += e.length;
  }
  throw new Error('past the end');
}

/** Coalesce adjacent extents with the same flags (how a client reads them). */
function push(out: Extent[], length: number, flags: number): void {
  const last = out[out.length - 1];
  if (last !== undefined && last.flags === flags) last.length += length;
  else out.push({ length, flags });
}
const coalesce = (ext: Extent[]) => {
  const out: Extent[] = [];
  for (const e of ext) push(out, e.length, e.flags);
  return out;
};

/**
 * A device below whose block status is `extents`: at most three extents an answer, from the
 * requested offset on, as a device may.
 */
function deviceWith(extents: Extent[]): BlockDevice {
  return {
    extents: async (start: number, len: number) => {
      const out: Extent[] = [];
      let at = 0;
      for (const e of extents) {
        const a = Math.max(at, start);
        const b = Math.min(at + e.length, start + len);
        if (a < b && out.length < 3) out.push({ length: b - a, flags: e.flags });
        at += e.length;
      }
      return out;
    },
  } as unknown as BlockDevice;
}

/** Snapshots 1 to n of `origin` (seq = id), valid; the last one writable. */
function snapshotsOf(origin: OriginState, n: number): Snapshot[] {
  return Array.from({ length: n }, (_, i) => ({
    id: i + 1,
    name: `s${i + 1}`,
    origin,
    seq: i + 1,
    writable: i + 1 === n,
    created: 0,
    state: 'valid',
    privateChunks: new PrivateChunks(),
  }));
}

/** The snapshot's device over `below`, for block status only (no store, no copies). */
function snapshotDevice(snap: Snapshot, below: BlockDevice): SnapshotDevice {
  return new SnapshotDevice(
    snap,
    below,
    {} as DiffStore,
    async () => undefined,
    { record: async () => undefined } as never,
    async () => undefined,
  );
}

describe('snapshot block status over the index', () => {
  it('matches the byte-exact model in both contexts', async () => {
    for (let seed = 1; seed <= 150; seed++) {
      const r = rngInt(5000 + seed);
      const chunkSize = [512, 4096][seed % 2] as number;
      const chunks = 1 + r(60);
      const size = chunks * chunkSize - (seed % 3 === 0 ? r(chunkSize - 1) : 0); // often a short last chunk
      const origin = new OriginState(1, 'disk', size, chunkSize);
      const extents: Extent[] = [];
      for (let left = size; left > 0; ) {
        const len = Math.min(left, 1 + r(3 * chunkSize));
        extents.push({ length: len, flags: r(2) === 0 ? 0 : 3 });
        left -= len;
      }
      const below = deviceWith(extents);
      const snaps = snapshotsOf(origin, 3);
      let slot = 0;
      for (let i = r(3 * chunks); i > 0; i--) {
        const c = r(chunks);
        const seq = 1 + r(3);
        if (origin.table.latest(c) < seq) origin.table.add(c, seq, slot++, 0);
        if (r(4) === 0) origin.table.lose(c, slot - 1, snaps);
      }
      for (let i = r(chunks); i > 0; i--) (snaps[2] as Snapshot).privateChunks.set(r(chunks), copyOf(slot++, 0));
      for (const snap of snaps) {
        const dev = snapshotDevice(snap, below);
        for (let q = 0; q < 8; q++) {
          const offset = r(size);
          const length = 1 + r(size - offset + chunkSize); // may run past the end
          const end = Math.min(size, offset + length);
          const alloc = coalesce(await dev.extents(offset, length));
          expect(alloc, `seed ${seed}`).toEqual(
            modelExtents(origin.table, snap, extents, chunkSize, offset, end, 0, (f) => f),
          );
          const depth = coalesce(await dev.depthExtents(offset, length));
          expect(depth, `seed ${seed}`).toEqual(
            modelExtents(origin.table, snap, extents, chunkSize, offset, end, 1, () => 2),
          );
        }
      }
    }
  });
});

describe('snapshot block status past 2^32 chunks', () => {
  it('matches the byte-exact model around chunk 2^32, up to a short last chunk', async () => {
    for (let seed = 1; seed <= 40; seed++) {
      const r = rngInt(9000 + seed);
      const chunkSize = 512;
      const first = 2 ** 32 - 40; // the chunks of interest: [first, first + 80)
      const size = (first + 80) * chunkSize - (seed % 2 === 0 ? 1 + r(chunkSize - 1) : 0);
      const origin = new OriginState(1, 'big', size, chunkSize);
      // One extent up to the region, then small ones of either kind.
      const extents: Extent[] = [{ length: first * chunkSize - r(3 * chunkSize), flags: 3 }];
      for (let at = extents[0]?.length ?? 0; at < size; ) {
        const len = Math.min(size - at, 1 + r(3 * chunkSize));
        extents.push({ length: len, flags: r(2) === 0 ? 0 : 3 });
        at += len;
      }
      const below = deviceWith(extents);
      const snaps = snapshotsOf(origin, 2);
      let slot = 0;
      for (let i = r(120); i > 0; i--) {
        const c = first + r(80);
        const seq = 1 + r(2);
        if (origin.table.latest(c) < seq) origin.table.add(c, seq, slot++, 0);
      }
      for (let i = r(20); i > 0; i--) (snaps[1] as Snapshot).privateChunks.set(first + r(80), copyOf(slot++, 0));
      for (const snap of snaps) {
        const dev = snapshotDevice(snap, below);
        for (let q = 0; q < 6; q++) {
          const offset = (first - 2) * chunkSize + r(size - (first - 2) * chunkSize);
          const length = 1 + r(size - offset + chunkSize); // may run past the end
          const end = Math.min(size, offset + length);
          expect(coalesce(await dev.extents(offset, length)), `seed ${seed}`).toEqual(
            modelExtents(origin.table, snap, extents, chunkSize, offset, end, 0, (f) => f),
          );
          expect(coalesce(await dev.depthExtents(offset, length)), `seed ${seed}`).toEqual(
            modelExtents(origin.table, snap, extents, chunkSize, offset, end, 1, () => 2),
          );
        }
      }
    }
  });
});
