/** A set of byte ranges for test models: sorted, disjoint, non-adjacent [start, end) pairs. */

/** [offset, length, flags]: one extent as the tests compare them. */
export type Run = [number, number, number];

export class Intervals {
  private starts: number[] = [];
  private ends: number[] = [];

  add(start: number, end: number): void {
    if (end <= start) return;
    const keepS: number[] = [];
    const keepE: number[] = [];
    let s = start;
    let e = end;
    for (let i = 0; i < this.starts.length; i++) {
      const a = this.starts[i] as number;
      const b = this.ends[i] as number;
      if (b < s || a > e) {
        keepS.push(a);
        keepE.push(b);
      } else {
        s = Math.min(s, a);
        e = Math.max(e, b);
      }
    }
    this.set(keepS, keepE, s, e);
  }

  remove(start: number, end: number): void {
    if (end <= start) return;
    const keepS: number[] = [];
    const keepE: number[] = [];
    for (let i = 0; i < this.starts.length; i++) {
      const a = this.starts[i] as number;
      const b = this.ends[i] as number;
      if (b <= start || a >= end) {
        keepS.push(a);
        keepE.push(b);
        continue;
      }
      if (a < start) {
        keepS.push(a);
        keepE.push(start);
      }
      if (b > end) {
        keepS.push(end);
        keepE.push(b);
      }
    }
    this.starts = keepS;
    this.ends = keepE;
  }

  /** [lo, hi) as runs: `inFlags` inside the set, `outFlags` outside, alternating. */
  runs(lo: number, hi: number, inFlags: number, outFlags: number): Run[] {
    const out: Run[] = [];
    let pos = lo;
    for (let i = 0; i < this.starts.length && pos < hi; i++) {
      const a = Math.max(lo, this.starts[i] as number);
      const b = Math.min(hi, this.ends[i] as number);
      if (b <= a || b <= pos) continue;
      if (a > pos) out.push([pos, a - pos, outFlags]);
      out.push([Math.max(a, pos), b - Math.max(a, pos), inFlags]);
      pos = b;
    }
    if (pos < hi) out.push([pos, hi - pos, outFlags]);
    return out;
  }

  private set(keepS: number[], keepE: number[], s: number, e: number): void {
    let i = 0;
    while (i < keepS.length && (keepS[i] as number) < s) i++;
    keepS.splice(i, 0, s);
    keepE.splice(i, 0, e);
    this.starts = keepS;
    this.ends = keepE;
  }
}
