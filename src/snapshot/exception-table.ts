/**
 * Where each snapshot finds each chunk: the in-memory exception table of one origin device.
 *
 * Copies are versioned, so a first write copies a chunk once however many snapshots hold it
 * (not once per snapshot, as dm-snapshot does). A copy made while the newest live snapshot had
 * sequence number N carries `seq = N`; it holds the chunk as it was from the previous copy's
 * time up to that write, so snapshot s reads the copy with the smallest `seq >= s.seq`, and the
 * origin when there is none. A writable snapshot's own changes are its private chunks.
 *
 * Every copy keeps the checksum of its data and a `lost` flag (found damaged: reads of it answer
 * EIO; it stays in the table, so the snapshot never falls through to the origin's newer data).
 *
 * Memory: the newest copy of every chunk sits inline in an ordered tree of typed arrays
 * (chunk-tree.ts: chunk, seq, slot, crc, 16 bytes an entry, about 23 bytes a copy with leaves
 * two-thirds full); the older copies of a chunk copied for several snapshots sit beside it, as
 * (seq, slot, crc) triples in one array per chunk; the slots of lost copies in a set. Copies are
 * values, not objects: `find`, `resolve` and `entries` hand out fresh `Version` objects, so
 * compare copies with `sameCopy`, never `===`. The tree is ordered and weighted by the newest
 * copy's seq (snapshot s reads chunk c from the store when that is >= s.seq), so block status and
 * merge planning walk only the chunks a snapshot reads, without any index to rebuild.
 */
import { ChunkTree, LEAF } from './chunk-tree.ts';
import { type Copy, firstAbove, inserted, type SnapshotRef, type Source, sortedSeqs, type Version } from './copies.ts';
import { nextPrivate, PrivateChunks } from './private-chunks.ts';

export { type Copy, copyOf, type SnapshotRef, type Source, sameCopy, type Version } from './copies.ts';
export { nextPrivate, PrivateChunks };

/** Values of a tree entry: the newest copy. */
const SEQ = 0;
const SLOT = 1;
const CRC = 2;

export class ExceptionTable {
  /** chunk -> its newest copy (seq, slot, crc as u32); weighted by seq. */
  readonly #newest: ChunkTree;
  /** Chunks copied more than once: their older copies, (seq, slot, crc as int32) triples by ascending seq. */
  readonly #older = new Map<number, number[]>();
  /** The copies found damaged: slot -> chunk. */
  readonly #lost = new Map<number, number>();
  #count = 0;

  /** `leaf`: entries a leaf of the tree holds (smaller in tests). */
  constructor(leaf = LEAF) {
    this.#newest = new ChunkTree(3, leaf);
  }

  /** Number of copies held. */
  get size(): number {
    return this.#count;
  }

  /** Chunks with at least one copy. */
  get chunkCount(): number {
    return this.#newest.size;
  }

  /** Sequence number of the newest copy of `chunk`, or 0. */
  latest(chunk: number): number {
    const h = this.#newest.find(chunk);
    return h < 0 ? 0 : this.#newest.val(h, SEQ);
  }

  add(chunk: number, seq: number, slot: number, crc: number): Version {
    const t = this.#newest;
    const h = t.find(chunk);
    if (h < 0) t.insert(chunk, seq, slot, crc >>> 0);
    else {
      const older = this.#older.get(chunk) ?? [];
      const top = t.val(h, SEQ);
      if (seq >= top) {
        this.#older.set(chunk, inserted(older, older.length, top, t.val(h, SLOT), t.val(h, CRC) | 0));
        t.setVal(h, SLOT, slot);
        t.setVal(h, CRC, crc >>> 0);
        t.setVal(h, SEQ, seq);
      } else {
        let i = 0;
        while (i < older.length && (older[i] as number) <= seq) i += 3;
        this.#older.set(chunk, inserted(older, i, seq, slot, crc | 0));
      }
    }
    this.#count += 1;
    return { seq, slot, crc: crc | 0, lost: false };
  }

  /** Whether snapshot `snap` reads `chunk` from the store (a copy, lost or not, or its own). */
  readsStore(chunk: number, snap: SnapshotRef): boolean {
    if (snap.privateChunks.has(chunk)) return true;
    const h = this.#newest.find(chunk);
    return h >= 0 && this.#newest.val(h, SEQ) >= snap.seq;
  }

  /** The smallest chunk >= `from` holding a copy that snapshot `seq` reads, or undefined. O(log n). */
  nextCopied(from: number, seq: number): number | undefined {
    const h = this.#newest.next(from, seq);
    return h < 0 ? undefined : this.#newest.key(h);
  }

  /**
   * The smallest chunk >= `from` that `snap` reads from the store (a copy it reads, lost or
   * not, or one of its private chunks), or undefined. O(log n).
   */
  nextStored(from: number, snap: SnapshotRef): number | undefined {
    const copied = this.nextCopied(from, snap.seq);
    const own = nextPrivate(snap.privateChunks, from);
    if (copied === undefined) return own;
    return own === undefined || copied < own ? copied : own;
  }

  /**
   * `start` being a chunk `snap` reads from the store, the end (exclusive) of the run of
   * consecutive such chunks, at most `limit`. O(log n) a stretch of consecutive copies it reads
   * (a binary search in each leaf they span), plus one step a private chunk of the run.
   */
  storedRunEnd(start: number, snap: SnapshotRef, limit: number): number {
    const t = this.#newest;
    let end = start;
    let h = t.next(end, snap.seq); // the first copy >= end it reads
    while (end < limit) {
      if (h >= 0 && t.key(h) === end) {
        end = t.runEnd(h, snap.seq);
        h = t.next(end, snap.seq);
      } else if (snap.privateChunks.has(end)) end += 1;
      else break;
    }
    return Math.min(end, limit);
  }

  /**
   * Call `fn(first, end)` for each run of consecutive chunks in [from, to) that `snap` reads from
   * the store, in order: O(log n + chunks walked), one step per copied chunk it reads and per
   * private chunk (`fn` must not change the table).
   */
  storedRuns(snap: SnapshotRef, from: number, to: number, fn: (first: number, end: number) => void): void {
    const t = this.#newest;
    const own = snap.privateChunks;
    let h = t.next(from, snap.seq);
    let p = nextPrivate(own, from);
    let first = -1;
    let end = -1;
    for (;;) {
      const c = h >= 0 ? t.key(h) : Number.POSITIVE_INFINITY;
      const q = p ?? Number.POSITIVE_INFINITY;
      const x = Math.min(c, q);
      if (x >= to) break;
      if (x === c) h = t.following(h, snap.seq);
      if (x === q) p = nextPrivate(own, x + 1);
      if (x === end) end += 1;
      else {
        if (first >= 0) fn(first, end);
        first = x;
        end = x + 1;
      }
    }
    if (first >= 0) fn(first, end);
  }

  /** The copy snapshot `seq` reads for `chunk`, if any. */
  find(chunk: number, seq: number): Version | undefined {
    const t = this.#newest;
    const h = t.find(chunk);
    if (h < 0) return undefined;
    const top = t.val(h, SEQ);
    if (top < seq) return undefined;
    if (this.#older.size > 0) {
      const older = this.#older.get(chunk);
      if (older !== undefined)
        for (let i = 0; i < older.length; i += 3)
          if ((older[i] as number) >= seq) return this.#version(older[i], older[i + 1], older[i + 2]);
    }
    return this.#version(top, t.val(h, SLOT), t.val(h, CRC));
  }

  /** The copy of `chunk` held in `slot`, if any (to tell whether a copy read earlier is still held). */
  copyAt(chunk: number, slot: number): Version | undefined {
    const all = this.#versions(chunk);
    for (let i = 0; i < all.length; i += 3)
      if (all[i + 1] === slot) return this.#version(all[i], all[i + 1], all[i + 2]);
    return undefined;
  }

  resolve(chunk: number, snap: SnapshotRef): Source {
    const own = snap.privateChunks.get(chunk);
    if (own !== undefined) return { from: 'store', slot: own.slot, crc: own.crc, private: true, copy: own };
    const v = this.find(chunk, snap.seq);
    return v === undefined ? { from: 'origin' } : { from: 'store', slot: v.slot, crc: v.crc, private: false, copy: v };
  }

  /** The copy `snap` reads for `chunk` (its own private one, or a shared one), or undefined: `resolve` without the `Source`. */
  copyFor(chunk: number, snap: SnapshotRef): Copy | undefined {
    if (snap.privateChunks.size > 0) {
      const own = snap.privateChunks.get(chunk);
      if (own !== undefined) return own;
    }
    return this.find(chunk, snap.seq);
  }

  /** Whether a write to `chunk` must first copy it: some live snapshot still reads it from the origin. */
  needsCopy(chunk: number, live: readonly SnapshotRef[]): boolean {
    if (live.length === 0) return false;
    const latest = this.latest(chunk);
    for (let i = live.length - 1; i >= 0; i--) {
      const s = live[i] as SnapshotRef;
      if (s.seq <= latest) return false; // sorted by seq: older ones are covered too
      if (!s.privateChunks.has(chunk)) return true;
    }
    return false;
  }

  /**
   * Drop every copy no live snapshot reads any more (after a delete or an invalidation).
   * Calls `free(slot)` for each. A copy with sequence N whose predecessor has P is read by the
   * snapshots with P < seq <= N. O(n log snapshots).
   */
  prune(live: readonly SnapshotRef[], free: (slot: number) => void): void {
    const seqs = sortedSeqs(live);
    const oldest = seqs[firstAbove(seqs, 0)] ?? Number.POSITIVE_INFINITY;
    const t = this.#newest;
    t.retain((h) => {
      const chunk = t.key(h);
      if (this.#older.size === 0 || !this.#older.has(chunk)) {
        // One copy, read by the snapshots with 0 < seq <= its seq: is the oldest one among them?
        if (oldest <= t.val(h, SEQ)) return true;
        this.#drop(t.val(h, SLOT), free);
        return false;
      }
      const all = this.#versions(chunk, h);
      const kept = this.#keptOf(all, seqs, free);
      if (kept.length !== all.length) this.#rewrite(chunk, h, kept);
      return kept.length > 0;
    });
  }

  /** `prune` for one chunk only (a copy just added that may have no reader left). */
  pruneChunk(chunk: number, live: readonly SnapshotRef[], free: (slot: number) => void): void {
    const all = this.#versions(chunk);
    if (all.length === 0) return;
    const kept = this.#keptOf(all, sortedSeqs(live), free);
    if (kept.length !== all.length) this.#store(chunk, kept);
  }

  /** The copies found damaged (lost), in no particular order. O(lost copies). */
  *lost(): IterableIterator<[number, Version]> {
    for (const [slot, chunk] of [...this.#lost]) {
      const v = this.copyAt(chunk, slot);
      if (v !== undefined) yield [chunk, v];
    }
  }

  /** Every copy, by ascending chunk and then seq: for attributing store use, claiming slots, checkpoints. */
  *entries(): IterableIterator<[number, Version]> {
    const t = this.#newest;
    let stamp = t.stamp;
    for (let h = t.next(0); h >= 0; ) {
      const chunk = t.key(h);
      const all = this.#versions(chunk, h);
      for (let i = 0; i < all.length; i += 3) yield [chunk, this.#version(all[i], all[i + 1], all[i + 2])];
      // Changed meanwhile (a caller may change the table between two steps): find the place again.
      if (t.stamp !== stamp) {
        stamp = t.stamp;
        h = t.next(chunk + 1);
      } else h = t.following(h);
    }
  }

  /** The same as `entries` (the table compares by its copies). */
  [Symbol.iterator](): IterableIterator<[number, Version]> {
    return this.entries();
  }

  /** Chunks with at least one copy, in ascending order. */
  chunks(): number[] {
    const t = this.#newest;
    const out: number[] = [];
    for (let h = t.next(0); h >= 0; h = t.following(h)) out.push(t.key(h));
    return out;
  }

  remove(chunk: number, slot: number): void {
    const all = this.#versions(chunk);
    const kept: number[] = [];
    for (let i = 0; i < all.length; i += 3) {
      if (all[i + 1] === slot) this.#drop(slot, () => undefined);
      else kept.push(all[i] as number, all[i + 1] as number, all[i + 2] as number);
    }
    if (kept.length !== all.length) this.#store(chunk, kept);
  }

  /**
   * Mark the copy of `chunk` in `slot` lost: a shared version, or the private copy of one of
   * `snapshots`. Returns it, or undefined when no such copy is held (freed since).
   */
  lose(chunk: number, slot: number, snapshots: readonly SnapshotRef[]): Copy | undefined {
    const shared = this.copyAt(chunk, slot);
    if (shared !== undefined) {
      this.#lost.set(slot, chunk);
      shared.lost = true;
      return shared;
    }
    for (const s of snapshots) {
      const own = s.privateChunks.get(chunk);
      if (own?.slot === slot) {
        own.lost = true;
        return own;
      }
    }
    return undefined;
  }

  #version(seq: number | undefined, slot: number | undefined, crc: number | undefined): Version {
    const s = slot as number;
    return { seq: seq as number, slot: s, crc: (crc as number) | 0, lost: this.#lost.size > 0 && this.#lost.has(s) };
  }

  /** Every copy of `chunk` as (seq, slot, crc) triples by ascending seq (`h`: its handle, if known). */
  #versions(chunk: number, h = this.#newest.find(chunk)): number[] {
    if (h < 0) return [];
    const t = this.#newest;
    const top = [t.val(h, SEQ), t.val(h, SLOT), t.val(h, CRC)];
    const older = this.#older.get(chunk);
    return older === undefined ? top : [...older, ...top];
  }

  /** The copies of `all` some snapshot of `seqs` (ascending) reads; `free` the others. */
  #keptOf(all: number[], seqs: number[], free: (slot: number) => void): number[] {
    const kept: number[] = [];
    let prev = 0;
    for (let i = 0; i < all.length; i += 3) {
      const seq = all[i] as number;
      const reader = seqs[firstAbove(seqs, prev)];
      prev = seq;
      if (reader !== undefined && reader <= seq) kept.push(seq, all[i + 1] as number, all[i + 2] as number);
      else this.#drop(all[i + 1] as number, free);
    }
    return kept;
  }

  #drop(slot: number, free: (slot: number) => void): void {
    free(slot);
    this.#lost.delete(slot);
    this.#count -= 1;
  }

  /** Hold exactly the copies `kept` (triples by ascending seq) of `chunk`. */
  #store(chunk: number, kept: number[]): void {
    if (kept.length === 0) {
      this.#newest.delete(chunk);
      this.#older.delete(chunk);
      return;
    }
    this.#rewrite(chunk, this.#newest.find(chunk), kept);
  }

  /** Write `kept` (not empty) as the copies of held `chunk`, at handle `h`. */
  #rewrite(chunk: number, h: number, kept: number[]): void {
    if (kept.length === 0) {
      this.#older.delete(chunk);
      return; // the caller removes the entry
    }
    const n = kept.length;
    const t = this.#newest;
    t.setVal(h, SLOT, kept[n - 2] as number);
    t.setVal(h, CRC, kept[n - 1] as number);
    t.setVal(h, SEQ, kept[n - 3] as number);
    if (n > 3) this.#older.set(chunk, kept.slice(0, n - 3));
    else this.#older.delete(chunk);
  }
}
