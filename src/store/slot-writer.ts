/**
 * Writes of whole slots, coalesced: the copies made in one turn of the event loop (and while the
 * previous writes are in flight) go out together, and copies in consecutive slots of one range
 * go out as ONE `pwritev`. A first write after a snapshot costs a thread-pool round trip per
 * system call (a wake-up, a context switch, the pool's lock): measured as the largest share of
 * the copy path's CPU, more than the copying itself. With slots allocated in order (space.ts,
 * next fit, runs for the chunks of one request), the copies of a batch mostly sit side by side.
 *
 * Each write resolves or rejects on its own group's outcome (a failed `pwritev` fails only the
 * copies it carried). Nothing about durability changes: a write resolves once the bytes are in
 * the file, and the journal's sync (one per batch) makes them durable with their records.
 * Writes to the same slot keep their order (a second one waits for the next round).
 */
import { killPoint } from './kill-point.ts';
import type { StoreSpace } from './space.ts';

interface SlotWrite {
  slot: number;
  data: Buffer;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** Most buffers in one `pwritev` (IOV_MAX is 1024) and most bytes. */
const MAX_GROUP_BUFFERS = 256;
const MAX_GROUP_BYTES = 16 * 1024 * 1024;

export class SlotWriter {
  private readonly space: StoreSpace;
  private queue: SlotWrite[] = [];
  private scheduled = false;
  private running = false;

  constructor(space: StoreSpace) {
    this.space = space;
  }

  /** Write `data` (exactly one slot) to `slot`; resolves once it is in the file. */
  write(slot: number, data: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ slot, data, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.running) return;
    this.scheduled = true;
    // After this turn's I/O callbacks and their promise chains: the copies they start join.
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private async flush(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length > 0) {
        const { now, later } = takeDistinct(this.queue);
        this.queue = later;
        // A slot that does not exist forms a group of its own, whose write then fails.
        const end = (slot: number): number => (slot < this.space.totalSlots ? this.space.runEnd(slot) : slot + 1);
        await Promise.all(groups(now, end, this.space.chunkSize).map((g) => this.writeGroup(g)));
      }
    } finally {
      this.running = false;
    }
  }

  private async writeGroup(group: SlotWrite[]): Promise<void> {
    const first = group[0] as SlotWrite;
    try {
      if (group.length === 1) await this.space.writeSlot(first.slot, first.data);
      else
        await this.space.writeRun(
          first.slot,
          group.map((w) => w.data),
        );
    } catch (err) {
      for (const w of group) w.reject(err);
      return;
    }
    killPoint('copy:slots-written'); // TEST ONLY: copies in the file, their records not yet
    for (const w of group) w.resolve();
  }
}

/** The writes of `queue` to distinct slots (the first of each), and the rest, in order. */
function takeDistinct(queue: SlotWrite[]): { now: SlotWrite[]; later: SlotWrite[] } {
  const seen = new Set<number>();
  const now: SlotWrite[] = [];
  const later: SlotWrite[] = [];
  for (const w of queue) {
    if (seen.has(w.slot)) later.push(w);
    else {
      seen.add(w.slot);
      now.push(w);
    }
  }
  return { now, later };
}

/**
 * Cut writes to distinct slots into groups of consecutive slots that do not cross a range's end
 * (`runEnd(slot)`: the first slot after the range holding `slot`), each within the size limits.
 * Only whole slots (`slotSize` bytes) join a group: the copy of a device's last chunk, when the
 * device's size is not a multiple of the chunk, is shorter, and one `pwritev` would put whatever
 * follows it in the wrong place; it is written on its own.
 */
export function groups<T extends { slot: number; data: Buffer }>(
  writes: T[],
  runEnd: (slot: number) => number,
  slotSize: number,
): T[][] {
  const sorted = [...writes].sort((a, b) => a.slot - b.slot);
  const out: T[][] = [];
  let cur: T[] = [];
  let bytes = 0;
  let end = 0;
  for (const w of sorted) {
    const prev = cur[cur.length - 1];
    const joins =
      prev !== undefined &&
      w.slot === prev.slot + 1 &&
      prev.data.length === slotSize &&
      w.data.length === slotSize &&
      w.slot < end &&
      cur.length < MAX_GROUP_BUFFERS &&
      bytes + w.data.length <= MAX_GROUP_BYTES;
    if (!joins) {
      if (cur.length > 0) out.push(cur);
      cur = [];
      bytes = 0;
      end = runEnd(w.slot);
    }
    cur.push(w);
    bytes += w.data.length;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}
