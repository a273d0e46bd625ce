/**
 * The exports a server offers: a name, a description and the device behind it, plus the
 * metadata contexts it serves. Views register here (a snapshot appears as `DEVICE@SNAP` the
 * moment it is taken), and the handshake looks names up here. The empty name is the default
 * export: the first one added, unless one is named "".
 */
import type { BlockDevice } from '../block/device.ts';
import { NbdsnapError } from '../errors.ts';
import { BASE_ALLOCATION, type Extent, TransmissionFlag as TF } from '../nbd-protocol/index.ts';

/** A metadata context an export offers, e.g. `base:allocation`. */
export interface MetaContextSource {
  readonly name: string;
  /** Extents from `offset`, consecutive, none past the end; the flags are the context's. */
  extents(offset: number, length: number): Promise<Extent[]>;
}

export interface ExportEntry {
  readonly name: string;
  readonly description: string;
  readonly device: BlockDevice;
  readonly readOnly: boolean;
  /** Contexts offered besides `base:allocation` (which every export has); asked at each handshake. */
  readonly extraContexts?: () => readonly MetaContextSource[];
}

export function contextsOf(entry: ExportEntry): MetaContextSource[] {
  const base: MetaContextSource = {
    name: BASE_ALLOCATION,
    extents: (offset, length) => entry.device.extents(offset, length),
  };
  return [base, ...(entry.extraContexts?.() ?? [])];
}

/** Transmission flags for an export, as seen by a connection with or without structured replies. */
export function transmissionFlags(entry: ExportEntry, structured: boolean): number {
  const caps = entry.device.capabilities;
  let flags = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_CACHE;
  if (structured) flags |= TF.SEND_DF;
  if (caps.multiConn) flags |= TF.CAN_MULTI_CONN;
  if (isReadOnly(entry)) return flags | TF.READ_ONLY;
  flags |= TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO;
  return flags;
}

export const isReadOnly = (entry: ExportEntry): boolean => entry.readOnly || !entry.device.capabilities.writable;

export class ExportRegistry {
  private readonly entries = new Map<string, ExportEntry>();

  add(entry: ExportEntry): void {
    if (this.entries.has(entry.name)) {
      throw new NbdsnapError('EXISTS', `export "${entry.name}" already exists`);
    }
    this.entries.set(entry.name, entry);
  }

  remove(name: string): ExportEntry | undefined {
    const entry = this.entries.get(name);
    this.entries.delete(name);
    return entry;
  }

  /** Look up an export; "" finds the default export. */
  get(name: string): ExportEntry | undefined {
    const exact = this.entries.get(name);
    if (exact !== undefined || name !== '') return exact;
    return this.entries.values().next().value;
  }

  list(): ExportEntry[] {
    return [...this.entries.values()];
  }
}
