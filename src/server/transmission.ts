/**
 * The transmission phase of one connection: run each request against the export's device and
 * send its reply. Requests run concurrently and complete in any order; each reply (header and
 * data) is handed to `send` in one call, which writes it contiguously, so replies never
 * interleave on the socket.
 *
 * Replies are simple unless structured replies were negotiated; then READs answer with one
 * OFFSET_DATA chunk (so DF always holds), errors with an ERROR chunk carrying a message, and
 * other successes with a simple reply, which the spec allows for replies without payload.
 */
import type { BlockDevice } from '../block/device.ts';
import { errorMessage, toNbdError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { probes } from '../metrics/probes.ts';
import type { ExportStats } from '../metrics/stats.ts';
import {
  CommandFlag as CF,
  Command,
  commandName,
  type Extent,
  NbdError,
  nbdErrorName,
  type RequestMessage,
  serialize,
} from '../nbd-protocol/index.ts';
import type { Session } from './handshake.ts';
import { validateRequest } from './validate.ts';

/** Writes one whole reply (its buffers back to back) to the client. */
export type ReplySink = (buffers: Buffer[]) => void;

const succeeded = (): number => 0;

/** Extents sent per context in one BLOCK_STATUS reply, at most (spec: SHOULD NOT exceed 2^20). */
const MAX_EXTENTS = 65536;

export class Transmission {
  private readonly session: Session;
  private readonly device: BlockDevice;
  private readonly send: ReplySink;
  private readonly log: Logger;
  /** This export's figures, when metrics are served (looked up once per connection). */
  private readonly stats: ExportStats | undefined;

  constructor(session: Session, send: ReplySink, log: Logger) {
    this.session = session;
    this.device = session.entry.device;
    this.send = send;
    this.log = log;
    this.stats = probes.exportStats?.(session.entry.name);
  }

  /**
   * Serve one request to completion. Never rejects: every failure becomes an error reply. Resolves
   * with the NBD errno sent (0 on success), once the reply is queued.
   */
  serve(req: RequestMessage): Promise<number> {
    const stats = this.stats;
    if (stats === undefined) return this.run(req);
    const started = stats.begin();
    return this.run(req).then((error) => {
      stats.end(req.type, req.length, error, started);
      return error;
    });
  }

  // Promise chains rather than async functions on the per-request path: an async function's
  // state is kilobytes of garbage per request (measured: `execute` and `run` were the largest
  // allocations of 4 KiB writes, and scavenges 15% of their CPU).
  private run(req: RequestMessage): Promise<number> {
    if (this.log.enabled('debug')) {
      this.log.debug('request', {
        cmd: commandName(req.type),
        offset: req.offset,
        length: req.length,
        flags: req.flags,
      });
    }
    const rejected = validateRequest(req, this.session);
    if (rejected !== undefined) {
      this.replyError(req, rejected.error, rejected.message);
      return Promise.resolve(rejected.error);
    }
    let done: Promise<void>;
    try {
      done = this.execute(req);
    } catch (err) {
      done = Promise.reject(err); // a device that threw instead of rejecting
    }
    return done.then(succeeded, (err: unknown) => this.failed(req, err));
  }

  /** The error reply for a request that failed; returns the NBD errno sent. */
  private failed(req: RequestMessage, err: unknown): number {
    const error = this.errnoFor(req, err);
    if (error === NbdError.EIO)
      this.log.warn('I/O error', { cmd: commandName(req.type), offset: req.offset, err: errorMessage(err) });
    this.replyError(req, error, errorMessage(err));
    return error;
  }

  /** Answer a request with an error without running it (e.g. while shutting down). */
  refuse(req: RequestMessage, error: number, message: string): void {
    this.stats?.refused(req.type, error);
    this.replyError(req, error, message);
  }

  private execute(req: RequestMessage): Promise<void> {
    const { offset, length, flags } = req;
    const fua = (flags & CF.FUA) !== 0;
    const dev = this.device;
    switch (req.type) {
      case Command.READ:
        return dev.read(offset, length).then((data) => this.replyRead(req, data));
      case Command.WRITE:
        return this.acked(req, dev.write(offset, req.data as Buffer, fua));
      case Command.FLUSH:
        return this.acked(req, dev.flush());
      case Command.TRIM:
        return this.acked(req, dev.trim(offset, length, fua));
      case Command.WRITE_ZEROES:
        return this.acked(
          req,
          dev.writeZeroes(offset, length, {
            mayTrim: (flags & CF.NO_HOLE) === 0,
            fast: (flags & CF.FAST_ZERO) !== 0,
            fua,
          }),
        );
      case Command.CACHE:
        return this.acked(req, dev.cache(offset, length));
      case Command.BLOCK_STATUS:
        return this.replyBlockStatus(req, (flags & CF.REQ_ONE) !== 0);
    }
    this.send([serialize.simpleReply(0, req.cookie)]);
    return Promise.resolve();
  }

  /** The simple success reply once `done` resolves. */
  private acked(req: RequestMessage, done: Promise<void>): Promise<void> {
    return done.then(() => this.send([serialize.simpleReply(0, req.cookie)]));
  }

  private replyRead(req: RequestMessage, data: Buffer): void {
    if (this.session.structured) {
      this.send([serialize.offsetDataHeader(req.cookie, true, req.offset, data.length), data]);
    } else {
      this.send([serialize.simpleReply(0, req.cookie), data]);
    }
  }

  private async replyBlockStatus(req: RequestMessage, reqOne: boolean): Promise<void> {
    const entries = [...this.session.contexts];
    const answers = await Promise.all(entries.map(([, ctx]) => ctx.extents(req.offset, req.length)));
    const chunks = entries.map(([id], i) => {
      const extents = trimExtents(answers[i] as Extent[], req.length, reqOne);
      return serialize.blockStatusChunk(req.cookie, i === entries.length - 1, id, extents);
    });
    this.send(chunks);
  }

  private replyError(req: RequestMessage, error: number, message: string): void {
    if (this.log.enabled('debug'))
      this.log.debug('request failed', { cmd: commandName(req.type), error: nbdErrorName(error), message });
    if (this.session.structured) this.send([serialize.errorChunk(req.cookie, true, error, message)]);
    else this.send([serialize.simpleReply(error, req.cookie)]);
  }

  /** nbdkit's rules: ENOTSUP only for FAST_ZERO, EOVERFLOW only for DF reads. */
  private errnoFor(req: RequestMessage, err: unknown): number {
    const error = toNbdError(err);
    if (error === NbdError.ENOTSUP && (req.flags & CF.FAST_ZERO) === 0) return NbdError.EINVAL;
    if (error === NbdError.EOVERFLOW && (req.flags & CF.DF) === 0) return NbdError.EINVAL;
    return error;
  }
}

/** At least one extent, none beyond the request under REQ_ONE, and a bounded count. */
function trimExtents(extents: Extent[], length: number, reqOne: boolean): Extent[] {
  if (extents.length === 0) return [{ length, flags: 0 }];
  if (reqOne) {
    const first = extents[0] as Extent;
    return [{ length: Math.min(first.length, length), flags: first.flags }];
  }
  return extents.length > MAX_EXTENTS ? extents.slice(0, MAX_EXTENTS) : extents;
}
