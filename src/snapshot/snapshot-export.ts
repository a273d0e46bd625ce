/**
 * The export entry of a snapshot, `DEVICE@SNAP`: its device, and the metadata contexts it
 * offers: `base:allocation`, `qemu:allocation-depth` (1 = in the store, 2 = from the origin),
 * `qemu:dirty-bitmap:FROM` for each earlier snapshot point of the device, and the facts a remote
 * backup tool needs (`x-nbdsnap:point=SEQ`, `created=MS`, `generation=UUID`, `block-size=N`),
 * which it can list over NBD alone (LIST_META_CONTEXT "x-nbdsnap:"); their block status is empty.
 */
import type { BlockDevice } from '../block/device.ts';
import type { CbtControl } from '../cbt/cbt-control.ts';
import { QEMU_ALLOCATION_DEPTH } from '../nbd-protocol/index.ts';
import type { ExportEntry, MetaContextSource } from '../server/exports.ts';
import type { DiffStore } from '../store/store.ts';
import type { Copy } from './exception-table.ts';
import { exportName, type Snapshot } from './model.ts';
import type { RecordSink } from './recorder.ts';
import { SnapshotDevice } from './snapshot-device.ts';

export function snapshotExport(
  snap: Snapshot,
  base: BlockDevice,
  store: DiffStore,
  cbt: CbtControl,
  sink: RecordSink,
  onDamaged: (chunk: number, copy: Copy) => Promise<void>,
): ExportEntry {
  // A write to a snapshot changes it (era = its seq) and makes it differ from what the next
  // snapshot will hold (era = seq + 1): both, as blksnap marks both of its maps.
  const track = (offset: number, length: number) =>
    cbt.track(snap.origin.name, offset, length, [snap.seq, snap.seq + 1]);
  const device = new SnapshotDevice(snap, base, store, track, sink, onDamaged);
  const depth = { name: QEMU_ALLOCATION_DEPTH, extents: (o: number, l: number) => device.depthExtents(o, l) };
  return {
    name: exportName(snap),
    description: `snapshot ${snap.name} of ${snap.origin.name}, taken ${new Date(snap.created).toISOString()}`,
    device,
    readOnly: !snap.writable,
    extraContexts: () => [depth, ...cbt.dirtyContexts(snap.origin.name, snap.seq), ...facts(snap, cbt)],
  };
}

function facts(snap: Snapshot, cbt: CbtControl): MetaContextSource[] {
  const gen = cbt.generation(snap.origin.name);
  const names = [`x-nbdsnap:point=${snap.seq}`, `x-nbdsnap:created=${snap.created}`];
  if (gen !== undefined) names.push(`x-nbdsnap:generation=${gen.generation}`, `x-nbdsnap:block-size=${gen.blockSize}`);
  return names.map((name) => ({ name, extents: async (_o: number, length: number) => [{ length, flags: 0 }] }));
}
