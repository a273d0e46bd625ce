/**
 * A sparse in-memory device for tests and demos: 64 KiB pages allocated on first write, freed
 * by TRIM and by zeroing whole pages, so block status shows real holes. Volatile: FLUSH is a
 * no-op and nothing survives the process.
 */
import type { Extent } from '../nbd-protocol/index.ts';
import { type BlockDevice, DATA, type DeviceCapabilities, HOLE_ZERO, pushExtent, type ZeroOptions } from './device.ts';

const PAGE = 64 * 1024;

export class MemoryDevice implements BlockDevice {
  readonly size: number;
  readonly capabilities: DeviceCapabilities = {
    writable: true,
    durable: false,
    trim: true,
    fastZero: true,
    multiConn: true,
  };
  private readonly pages = new Map<number, Buffer>();

  constructor(size: number) {
    this.size = size;
  }

  /** Pages currently allocated (for tests of sparseness). */
  get allocatedPages(): number {
    return this.pages.size;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    this.forEachPiece(offset, length, (page, inPage, n, at) => {
      this.pages.get(page)?.copy(out, at, inPage, inPage + n);
    });
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.forEachPiece(offset, data.length, (page, inPage, n, at) => {
      let p = this.pages.get(page);
      if (p === undefined) {
        p = Buffer.alloc(PAGE);
        this.pages.set(page, p);
      }
      data.copy(p, inPage, at, at + n);
    });
  }

  async writeZeroes(offset: number, length: number, _options: ZeroOptions): Promise<void> {
    this.zero(offset, length);
  }

  async trim(offset: number, length: number): Promise<void> {
    this.zero(offset, length);
  }

  private zero(offset: number, length: number): void {
    this.forEachPiece(offset, length, (page, inPage, n) => {
      if (n === PAGE) this.pages.delete(page);
      else this.pages.get(page)?.fill(0, inPage, inPage + n);
    });
  }

  async flush(): Promise<void> {}
  async cache(): Promise<void> {}

  async extents(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const end = Math.min(this.size, offset + length);
    this.forEachPiece(offset, end - offset, (page, _inPage, n) => {
      pushExtent(out, n, this.pages.has(page) ? DATA : HOLE_ZERO);
    });
    return out;
  }

  async close(): Promise<void> {
    this.pages.clear();
  }

  private forEachPiece(
    offset: number,
    length: number,
    fn: (page: number, inPage: number, n: number, at: number) => void,
  ): void {
    let at = 0;
    while (at < length) {
      const pos = offset + at;
      const page = Math.floor(pos / PAGE);
      const inPage = pos - page * PAGE;
      const n = Math.min(PAGE - inPage, length - at);
      fn(page, inPage, n, at);
      at += n;
    }
  }
}
