/** A fixed-size bit set over block numbers, with union and run iteration. */
export class Bitset {
  readonly size: number;
  private readonly bits: Uint8Array;

  constructor(size: number) {
    this.size = size;
    this.bits = new Uint8Array(Math.ceil(size / 8));
  }

  has(i: number): boolean {
    return ((this.bits[i >> 3] as number) & (1 << (i & 7))) !== 0;
  }

  set(i: number): void {
    this.bits[i >> 3] = (this.bits[i >> 3] as number) | (1 << (i & 7));
  }

  /** this |= other */
  or(other: Bitset): void {
    for (let i = 0; i < this.bits.length; i++) this.bits[i] = (this.bits[i] as number) | (other.bits[i] as number);
  }

  count(): number {
    let n = 0;
    for (let i = 0; i < this.size; i++) if (this.has(i)) n++;
    return n;
  }

  /** Runs of set bits as [first, count]. */
  *runs(): IterableIterator<[number, number]> {
    for (let i = 0; i < this.size; ) {
      if (this.bits[i >> 3] === 0 && (i & 7) === 0) {
        i += 8;
        continue;
      }
      if (!this.has(i)) {
        i++;
        continue;
      }
      const first = i;
      while (i < this.size && this.has(i)) i++;
      yield [first, i - first];
    }
  }
}
