/**
 * Where each snapshot finds each chunk: the in-memory exception table of one origin device.
 *
 * Copies are versioned, so a first write copies a chunk once however many snapshots hold it
 * (not once per snapshot, as dm-snapshot does). A copy made while the newest live snapshot had
 * sequence number N carries `seq = N`; it holds the chunk as it was from the previous copy's
 * time up to that write, so snapshot s reads the copy with the smallest `seq >= s.seq`, and the
 * origin when there is none. A writable snapshot's own changes are its private chunks.
 *
 * Memory: one Map entry and one small array per copied chunk (see the README for figures).
 */

export interface Version {
  seq: number;
  slot: number;
}

export type Source = { from: 'origin' } | { from: 'store'; slot: number; private: boolean };

/** What the table needs to know about a snapshot. */
export interface SnapshotRef {
  readonly seq: number;
  /** Chunks this (writable) snapshot has changed: chunk -> slot. */
  readonly privateChunks: Map<number, number>;
}

export class ExceptionTable {
  private readonly versions = new Map<number, Version[]>();
  private count = 0;

  /** Number of copies held. */
  get size(): number {
    return this.count;
  }

  /** Sequence number of the newest copy of `chunk`, or 0. */
  latest(chunk: number): number {
    const v = this.versions.get(chunk);
    return v === undefined ? 0 : (v[v.length - 1] as Version).seq;
  }

  add(chunk: number, seq: number, slot: number): void {
    const list = this.versions.get(chunk);
    if (list === undefined) this.versions.set(chunk, [{ seq, slot }]);
    else {
      list.push({ seq, slot });
      list.sort((a, b) => a.seq - b.seq);
    }
    this.count += 1;
  }

  /** The copy snapshot `seq` reads for `chunk`, if any. */
  find(chunk: number, seq: number): Version | undefined {
    const list = this.versions.get(chunk);
    if (list === undefined) return undefined;
    for (const v of list) if (v.seq >= seq) return v;
    return undefined;
  }

  resolve(chunk: number, snap: SnapshotRef): Source {
    const own = snap.privateChunks.get(chunk);
    if (own !== undefined) return { from: 'store', slot: own, private: true };
    const v = this.find(chunk, snap.seq);
    return v === undefined ? { from: 'origin' } : { from: 'store', slot: v.slot, private: false };
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
    const list = this.versions.get(chunk);
    if (list === undefined) return;
    let prev = 0;
    const kept: Version[] = [];
    for (const v of list) {
      const from = prev;
      prev = v.seq;
      if (seqs.some((s) => s > from && s <= v.seq)) kept.push(v);
      else {
        free(v.slot);
        this.count -= 1;
      }
    }
    if (kept.length === 0) this.versions.delete(chunk);
    else if (kept.length !== list.length) this.versions.set(chunk, kept);
  }

  /** Every copy, for attributing store use to snapshots and for claiming slots on replay. */
  *entries(): IterableIterator<[number, Version]> {
    for (const [chunk, list] of this.versions) for (const v of list) yield [chunk, v];
  }

  /** Chunks with at least one copy, in ascending order (for merge). */
  chunks(): number[] {
    return [...this.versions.keys()].sort((a, b) => a - b);
  }

  remove(chunk: number, slot: number): void {
    const list = this.versions.get(chunk);
    if (list === undefined) return;
    const kept = list.filter((v) => v.slot !== slot);
    this.count -= list.length - kept.length;
    if (kept.length === 0) this.versions.delete(chunk);
    else this.versions.set(chunk, kept);
  }
}
