/**
 * Which snapshot points a device keeps (pure): every point of a snapshot that exists, and the
 * newest `keep` points of deleted snapshots (by seq), so `--since` works for a deleted FROM
 * while the history kept stays bounded by the live state (`--cbt-keep-deleted N`). The others
 * are forgotten by FORGET records, committed in the same batch as the DELETE that pushed them
 * out (src/snapshot/commands.ts).
 */

/** A snapshot point of the current tracking generation. */
export interface PointInfo {
  name: string;
  /** The snapshot's sequence number: the point in the era history. */
  seq: number;
  /** Whether the snapshot still exists (else only its point is kept, for `--since`). */
  snapshot: boolean;
}

/** The points of `marks` (name -> seq), oldest first; `live`: names of snapshots that exist. */
export function pointList(marks: ReadonlyMap<string, number>, live: ReadonlySet<string>): PointInfo[] {
  return [...marks].map(([name, seq]) => ({ name, seq, snapshot: live.has(name) })).sort((a, b) => a.seq - b.seq);
}

/** Names of the deleted snapshots' points beyond the newest `keep`, oldest first. */
export function beyondKeep(marks: ReadonlyMap<string, number>, live: ReadonlySet<string>, keep: number): string[] {
  const deleted = pointList(marks, live).filter((p) => !p.snapshot);
  return deleted.slice(0, Math.max(0, deleted.length - keep)).map((p) => p.name);
}
