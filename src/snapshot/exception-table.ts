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
 * Memory: one Map entry per copied chunk holding the one version itself, or an array of them
 * when a chunk was copied more than once, plus an ordered index of the copied chunks for block
 * status (chunk-index.ts, about 4.6 bytes a chunk once block status has been asked; see the
 * README for figures).
 */
import { ChunkIndex } from './chunk-index.ts';

/** A chunk's data in a store slot. `crc` is kept as a signed 32-bit integer (`crc | 0`). */
export interface Copy {
  slot: number;
  crc: number;
  lost: boolean;
}

export interface Version extends Copy {
  seq: number;
}

export type Source = { from: 'origin' } | { from: 'store'; slot: number; crc: number; private: boolean; copy: Copy };

/** A store copy with checksum `crc` (u32 or int32). */
export function copyOf(slot: number, crc: number): Copy {
  return { slot, crc: crc | 0, lost: false };
}

/** What the table needs to know about a snapshot. */
export interface SnapshotRef {
  readonly seq: number;
  /** Chunks this (writable) snapshot has changed: chunk -> its own copy. */
  readonly privateChunks: Map<number, Copy>;
}

type Entry = Version | Version[];

/**
 * A snapshot's private chunks: a Map that also keeps them ordered (for block status). Changed
 * only by the catalog's transition, like any Map of the catalog.
 */
export class PrivateChunks extends Map<number, Copy> {
  readonly #index = new ChunkIndex(
    () => ({
      size: this.size,
      forEach: (emit) =>
        this.forEach((_copy, chunk) => {
          emit(chunk, 1);
        }),
    }),
    (chunk) => (this.has(chunk) ? 1 : Number.NEGATIVE_INFINITY),
  );

  /** Empty (Map's constructor would call `set` with entries before the index exists). */
  // biome-ignore lint/complexity/noUselessConstructor: it takes no entries, unlike Map's
  constructor() {
    super();
  }

  override set(chunk: number, copy: Copy): this {
    if (!this.has(chunk)) this.#index.invalidate();
    return super.set(chunk, copy);
  }

  override delete(chunk: number): boolean {
    const had = super.delete(chunk);
    if (had) this.#index.invalidate();
    return had;
  }

  override clear(): void {
    super.clear();
    this.#index.invalidate();
  }

  /** The smallest private chunk >= `from`, or undefined. */
  next(from: number): number | undefined {
    return this.#index.next(from, 0);
  }
}

/** The smallest chunk >= `from` of `chunks` (ordered when it is a `PrivateChunks`). */
export function nextPrivate(chunks: ReadonlyMap<number, Copy>, from: number): number | undefined {
  if (chunks instanceof PrivateChunks) return chunks.next(from);
  let best: number | undefined;
  for (const c of chunks.keys()) if (c >= from && (best === undefined || c < best)) best = c;
  return best;
}

const list = (e: Entry): Version[] => (Array.isArray(e) ? e : [e]);
const newest = (e: Entry): number => (Array.isArray(e) ? (e[e.length - 1] as Version).seq : e.seq);

export class ExceptionTable {
  private readonly versions = new Map<number, Entry>();
  private count = 0;
  /** Copied chunks in order, weighted by the sequence number of their newest copy. */
  readonly #index = new ChunkIndex(
    () => ({
      size: this.versions.size,
      forEach: (emit) =>
        this.versions.forEach((e, chunk) => {
          emit(chunk, newest(e));
        }),
    }),
    (chunk) => (this.versions.has(chunk) ? this.latest(chunk) : Number.NEGATIVE_INFINITY),
  );

  /** Number of copies held. */
  get size(): number {
    return this.count;
  }

  /** Sequence number of the newest copy of `chunk`, or 0. */
  latest(chunk: number): number {
    const e = this.versions.get(chunk);
    return e === undefined ? 0 : newest(e);
  }

  add(chunk: number, seq: number, slot: number, crc: number): Version {
    const v: Version = { seq, slot, crc: crc | 0, lost: false };
    const e = this.versions.get(chunk);
    if (e === undefined) {
      this.versions.set(chunk, v);
      this.#index.invalidate();
    } else {
      this.versions.set(
        chunk,
        [...list(e), v].sort((a, b) => a.seq - b.seq),
      );
      this.#index.raised(chunk, this.latest(chunk));
    }
    this.count += 1;
    return v;
  }

  /** Whether snapshot `snap` reads `chunk` from the store (a copy, lost or not, or its own). */
  readsStore(chunk: number, snap: SnapshotRef): boolean {
    if (snap.privateChunks.has(chunk)) return true;
    const e = this.versions.get(chunk);
    return e !== undefined && newest(e) >= snap.seq;
  }

  /** The smallest chunk >= `from` holding a copy that snapshot `seq` reads, or undefined. */
  nextCopied(from: number, seq: number): number | undefined {
    return this.#index.next(from, seq);
  }

  /**
   * The smallest chunk >= `from` that `snap` reads from the store (a copy it reads, lost or
   * not, or one of its private chunks), or undefined. O(log n) while nothing changes.
   */
  nextStored(from: number, snap: SnapshotRef): number | undefined {
    const copied = this.nextCopied(from, snap.seq);
    const own = nextPrivate(snap.privateChunks, from);
    if (copied === undefined) return own;
    return own === undefined || copied < own ? copied : own;
  }

  /** The copy snapshot `seq` reads for `chunk`, if any. */
  find(chunk: number, seq: number): Version | undefined {
    const e = this.versions.get(chunk);
    if (e === undefined) return undefined;
    if (!Array.isArray(e)) return e.seq >= seq ? e : undefined;
    for (const v of e) if (v.seq >= seq) return v;
    return undefined;
  }

  resolve(chunk: number, snap: SnapshotRef): Source {
    const own = snap.privateChunks.get(chunk);
    if (own !== undefined) return { from: 'store', slot: own.slot, crc: own.crc, private: true, copy: own };
    const v = this.find(chunk, snap.seq);
    return v === undefined ? { from: 'origin' } : { from: 'store', slot: v.slot, crc: v.crc, private: false, copy: v };
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
   * snapshots with P < seq <= N.
   */
  prune(live: readonly SnapshotRef[], free: (slot: number) => void): void {
    const seqs = live.map((s) => s.seq);
    // Deleting the entry being visited is safe while iterating a Map.
    for (const chunk of this.versions.keys()) this.pruneVersions(chunk, seqs, free);
  }

  /** `prune` for one chunk only (a copy just added that may have no reader left). */
  pruneChunk(chunk: number, live: readonly SnapshotRef[], free: (slot: number) => void): void {
    this.pruneVersions(
      chunk,
      live.map((s) => s.seq),
      free,
    );
  }

  private pruneVersions(chunk: number, seqs: number[], free: (slot: number) => void): void {
    const e = this.versions.get(chunk);
    if (e === undefined) return;
    let prev = 0;
    const kept: Version[] = [];
    const all = list(e);
    for (const v of all) {
      const from = prev;
      prev = v.seq;
      if (seqs.some((s) => s > from && s <= v.seq)) kept.push(v);
      else {
        free(v.slot);
        this.count -= 1;
      }
    }
    if (kept.length !== all.length) this.store(chunk, kept);
  }

  /** Every copy, for attributing store use to snapshots and for claiming slots on replay. */
  *entries(): IterableIterator<[number, Version]> {
    for (const [chunk, e] of this.versions) {
      if (Array.isArray(e)) for (const v of e) yield [chunk, v];
      else yield [chunk, e];
    }
  }

  /** Chunks with at least one copy, in ascending order (for merge). */
  chunks(): number[] {
    return [...this.versions.keys()].sort((a, b) => a - b);
  }

  remove(chunk: number, slot: number): void {
    const e = this.versions.get(chunk);
    if (e === undefined) return;
    const all = list(e);
    const kept = all.filter((v) => v.slot !== slot);
    this.count -= all.length - kept.length;
    this.store(chunk, kept);
  }

  /**
   * Mark the copy of `chunk` in `slot` lost: a shared version, or the private copy of one of
   * `snapshots`. Returns it, or undefined when no such copy is held (freed since).
   */
  lose(chunk: number, slot: number, snapshots: readonly SnapshotRef[]): Copy | undefined {
    const e = this.versions.get(chunk);
    let found: Copy | undefined = e === undefined ? undefined : list(e).find((v) => v.slot === slot);
    for (const s of snapshots) {
      const own = s.privateChunks.get(chunk);
      if (found === undefined && own?.slot === slot) found = own;
    }
    if (found !== undefined) found.lost = true;
    return found;
  }

  private store(chunk: number, kept: Version[]): void {
    if (kept.length === 0) {
      if (this.versions.delete(chunk)) this.#index.invalidate();
    } else this.versions.set(chunk, kept.length === 1 ? (kept[0] as Version) : kept);
  }
}
