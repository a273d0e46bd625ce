/**
 * The write payloads a remote session's replay log keeps until a flush covers them, though their
 * callers are answered before that (session.ts):
 * - a buffer from the buffer pool (the server's WRITE payloads, the copies the snapshot layer
 *   makes) is kept itself, held in the pool (`hold`), so that its owner's give-back does not let
 *   it be reused meanwhile: no copy;
 * - any other buffer (a slice of a split request, a small or foreign buffer) is copied, since its
 *   caller may write into it again once answered; the copies are reused (copies.ts).
 * A dropped payload goes back once nothing can still send it: after a flush covered it, or an
 * answer, it has left the socket; at close, the link may still be sending what was in flight, so
 * nothing goes back to the pool before the link is closed (`linger`, then `end`).
 */
import * as pool from '../block/buffer-pool.ts';
import { Copies } from './copies.ts';

export class Payloads {
  private readonly copies = new Copies();
  /** While closing: payloads dropped, returned once the link is closed. */
  private lingering: { data: Buffer; held: boolean }[] | undefined;

  /** What the log keeps for `data`: `data` itself (held in the pool), or a copy of it. */
  keep(data: Buffer): Buffer {
    if (pool.hold(data)) return data;
    const copy = this.copies.take(data.length);
    data.copy(copy);
    return copy;
  }

  /**
   * The log is done with `data` (kept by `keep`: `held` when it is the caller's buffer); `room`:
   * the bytes the log leaves of its budget, which bound the spare copies kept.
   */
  drop(data: Buffer, held: boolean, room: number): void {
    if (this.lingering !== undefined) this.lingering.push({ data, held });
    else if (held) pool.release(data);
    else this.copies.give(data, room);
  }

  /** The link is closing and may still send what it was given: hold every drop until `end`. */
  linger(): void {
    this.lingering ??= [];
  }

  /** Nothing is sent any more: every payload and spare copy goes back to the pool. */
  end(): void {
    const dropped = this.lingering ?? [];
    this.lingering = undefined;
    for (const p of dropped) {
      if (p.held) pool.release(p.data);
      else pool.give(p.data);
    }
    this.copies.clear();
  }
}
