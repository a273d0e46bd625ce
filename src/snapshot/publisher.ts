/**
 * Publishing the snapshot layers in the export registry: each served device's origin export
 * `DEVICE` (the top of its layer stack) and each snapshot's export `DEVICE@SNAP`, withdrawn when
 * the snapshot is deleted or its merge begins (connections still open to it answer EIO).
 */
import type { ExportRegistry } from '../server/exports.ts';
import type { DeviceStack } from './device-stack.ts';
import type { Snapshot } from './model.ts';
import { exportName } from './model.ts';
import { SnapshotDevice } from './snapshot-device.ts';

export class ExportPublisher {
  private readonly registry: ExportRegistry;
  /** The served devices' stacks by name (filled as the devices are set up). */
  private readonly stacks: ReadonlyMap<string, DeviceStack>;

  constructor(registry: ExportRegistry, stacks: ReadonlyMap<string, DeviceStack>) {
    this.registry = registry;
    this.stacks = stacks;
  }

  addOrigin(stack: DeviceStack, description: string, readOnly: boolean): void {
    this.registry.add({ name: stack.name, description, device: stack.merge, readOnly });
  }

  /** Whether the snapshot's device is served now (a store may hold snapshots of others). */
  served(snap: Snapshot): boolean {
    return this.stacks.get(snap.origin.name)?.state === snap.origin;
  }

  /** Publish a snapshot's export (not for a device not served now). */
  expose(snap: Snapshot): void {
    if (!this.served(snap)) return;
    this.registry.add((this.stacks.get(snap.origin.name) as DeviceStack).snapshotExport(snap));
  }

  hide(snap: Snapshot): void {
    this.registry.remove(exportName(snap));
  }

  /** A merge of the snapshot is starting: its export refuses requests; resolves once no write is in flight. */
  async fence(snap: Snapshot): Promise<void> {
    await this.device(snap)?.fence();
  }

  /** The merge could not be recorded: the export serves again. */
  unfence(snap: Snapshot): void {
    this.device(snap)?.unfence();
  }

  private device(snap: Snapshot): SnapshotDevice | undefined {
    const device = this.registry.get(exportName(snap))?.device;
    return device instanceof SnapshotDevice ? device : undefined;
  }
}
