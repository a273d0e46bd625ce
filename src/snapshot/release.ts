/**
 * The records that release a snapshot (pure): its DELETE, and in the same batch a FORGET for each
 * point of a deleted snapshot now beyond `--cbt-keep-deleted` (src/cbt/keep.ts). Used by
 * `snapshot delete` and by a finished merge, so both keep the same bounded history.
 */
import { beyondKeep } from '../cbt/keep.ts';
import type { JournalRecord } from '../store/records.ts';
import type { Catalog } from './catalog.ts';
import type { Snapshot } from './model.ts';

export function releaseRecords(catalog: Catalog, snap: Snapshot, keepDeleted: number): JournalRecord[] {
  const records: JournalRecord[] = [{ type: 'DELETE', snapshot: snap.id }];
  const { id } = snap.origin;
  const marks = catalog.bookmarks.get(id);
  if (marks === undefined) return records;
  const live = new Set(snap.origin.snapshots.filter((s) => s !== snap).map((s) => s.name));
  for (const point of beyondKeep(marks, live, keepDeleted)) records.push({ type: 'FORGET', device: id, name: point });
  return records;
}
