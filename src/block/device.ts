/**
 * The block-device interface every export is served from, and `Layer`, the base of every layer
 * that wraps another device (nbdkit's filter idea: a layer gets `next`, and may change the
 * arguments, call through, or answer itself). Backends (file, memory) sit at the bottom.
 *
 * Callers may trust their input: the server validates every request (range, flags, read-only)
 * in one place before any device sees it (src/server/validate.ts). Errors are thrown; their
 * `code` (an errno name) becomes the NBD error the client receives.
 */
import type { Extent } from '../nbd-protocol/index.ts';

export interface DeviceCapabilities {
  /** Writes, trims and zeroes are possible at all (a read-only file is not writable). */
  readonly writable: boolean;
  /** FLUSH and FUA make data durable (false only for volatile devices). */
  readonly durable: boolean;
  /** TRIM deallocates space (otherwise it is accepted and ignored, as the spec allows). */
  readonly trim: boolean;
  /** WRITE_ZEROES without writing zero buffers, so FAST_ZERO can be honoured. */
  readonly fastZero: boolean;
  /** All connections see one consistent device: FLUSH on one covers writes from all. */
  readonly multiConn: boolean;
}

export interface ZeroOptions {
  /** The range may be deallocated (NO_HOLE was not set). */
  mayTrim: boolean;
  /** FAST_ZERO: fail with ENOTSUP rather than zero slowly. */
  fast: boolean;
  fua: boolean;
}

export interface BlockDevice {
  readonly size: number;
  readonly capabilities: DeviceCapabilities;
  /** Exactly `length` bytes from `offset`. */
  read(offset: number, length: number): Promise<Buffer>;
  /** Durable before resolving when `fua`. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /** A prefetch hint. */
  cache(offset: number, length: number): Promise<void>;
  /**
   * `base:allocation` extents covering at least the first byte of [offset, offset+length),
   * consecutive from `offset`, none past the end of the device.
   */
  extents(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}

/** A layer that passes everything to `next`; subclasses override what they change. */
export class Layer implements BlockDevice {
  protected readonly next: BlockDevice;

  constructor(next: BlockDevice) {
    this.next = next;
  }

  get size(): number {
    return this.next.size;
  }
  get capabilities(): DeviceCapabilities {
    return this.next.capabilities;
  }
  read(offset: number, length: number): Promise<Buffer> {
    return this.next.read(offset, length);
  }
  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.next.write(offset, data, fua);
  }
  writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    return this.next.writeZeroes(offset, length, options);
  }
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.next.trim(offset, length, fua);
  }
  flush(): Promise<void> {
    return this.next.flush();
  }
  cache(offset: number, length: number): Promise<void> {
    return this.next.cache(offset, length);
  }
  extents(offset: number, length: number): Promise<Extent[]> {
    return this.next.extents(offset, length);
  }
  close(): Promise<void> {
    return this.next.close();
  }
}

/** Flags of `base:allocation`. */
export const DATA = 0;
export const HOLE_ZERO = 3;

/** Append an extent, merging it with the previous one when the flags are equal. */
export function pushExtent(out: Extent[], length: number, flags: number): void {
  let left = length;
  while (left > 0) {
    const last = out[out.length - 1];
    if (last !== undefined && last.flags === flags && last.length < MAX_EXTENT) {
      const add = Math.min(left, MAX_EXTENT - last.length);
      last.length += add;
      left -= add;
    } else {
      const take = Math.min(left, MAX_EXTENT);
      out.push({ length: take, flags });
      left -= take;
    }
  }
}

/** Largest extent length reported (u32 on the wire, kept 4 KiB-aligned). */
export const MAX_EXTENT = 0xffff_f000;
