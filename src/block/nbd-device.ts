/**
 * A device on a remote NBD export (`nbd://`, `nbds://`, `nbd+unix://`, `nbds+unix://`), served
 * through nbdsnap's own client: an origin in front of another NBD server (qemu-nbd over an RBD
 * image, nbdkit, another nbdsnap), or a store range on one.
 *
 * - Connections: `connections` (default 4) when the export advertises CAN_MULTI_CONN, else one.
 * - FLUSH and FUA keep their meaning: FUA is sent as FUA, or as the write then a FLUSH when the
 *   export has SEND_FLUSH but not SEND_FUA. An export without SEND_FLUSH cannot make anything
 *   durable on request: the device says so (`durable: false`), and a store refuses it.
 * - TRIM, WRITE_ZEROES (NO_HOLE, FAST_ZERO), CACHE and base:allocation block status are passed
 *   through when the export supports them; otherwise TRIM and CACHE are ignored (as the protocol
 *   allows), zeroes are written as zero buffers, and every extent is reported as data.
 * - Requests larger than the export's maximum payload are split.
 * - Losing the remote: see src/remote/session.ts (reconnect with back-off, replay of the writes
 *   not yet covered by a flush, EIO after `timeoutMs`).
 *
 * The remote cannot be locked: see the README ("Remote origins and stores").
 */
import { NbdsnapError } from '../errors.ts';
import { CommandFlag, type Extent, TransmissionFlag as TF } from '../nbd-protocol/index.ts';
import { Backoff } from '../remote/backoff.ts';
import { ConnectionPool, isConnectionLoss } from '../remote/pool.ts';
import { type OpKind, RemoteSession } from '../remote/session.ts';
import { redactUri } from '../remote/uri.ts';
import { type BlockDevice, DATA, type DeviceCapabilities, type ZeroOptions } from './device.ts';

export interface RemoteSettings {
  /** Connections when the export allows several (CAN_MULTI_CONN). Default 4. */
  connections?: number | undefined;
  /** A request not answered within this many ms fails with EIO. Default 60 s. */
  timeoutMs?: number | undefined;
  /** Payload bytes kept for replay until a flush covers them. Default 64 MiB. */
  replayBudget?: number | undefined;
}

export interface NbdDeviceOptions extends RemoteSettings {
  readOnly?: boolean | undefined;
  /** Told about losses and reconnects. */
  onEvent?: (event: string, detail: string) => void;
}

export const DEFAULT_REMOTE = { connections: 4, timeoutMs: 60_000, replayBudget: 64 * 1024 * 1024 } as const;

/** Most bytes of one WRITE_ZEROES or TRIM request (the length is 32 bits on the wire). */
const MAX_RANGE = 1024 * 1024 * 1024;
const ZERO_STEP = 1024 * 1024;

export class NbdDevice implements BlockDevice {
  readonly size: number;
  readonly capabilities: DeviceCapabilities;
  /** What the export offers, as it said at the first connection. */
  readonly flags: number;
  readonly connections: number;
  readonly uri: string;
  private readonly session: RemoteSession;
  private readonly maxPayload: number;
  private readonly blockStatus: boolean;

  private constructor(uri: string, pool: ConnectionPool, session: RemoteSession, readOnly: boolean) {
    this.uri = uri;
    this.session = session;
    this.size = pool.size;
    this.flags = pool.transmissionFlags;
    this.connections = pool.connections;
    this.maxPayload = Math.max(4096, Math.min(pool.maxPayload, 32 * 1024 * 1024));
    this.blockStatus = pool.hasBaseAllocation;
    const f = this.flags;
    this.capabilities = {
      writable: !readOnly && (f & TF.READ_ONLY) === 0,
      durable: (f & TF.SEND_FLUSH) !== 0,
      trim: (f & TF.SEND_TRIM) !== 0,
      fastZero: (f & TF.SEND_WRITE_ZEROES) !== 0 && (f & TF.SEND_FAST_ZERO) !== 0,
      // One session for every client of this device: a flush through it covers every write
      // answered through it, over however many connections (they are only several with
      // CAN_MULTI_CONN).
      multiConn: true,
    };
  }

  /** Connect (once: a remote that cannot be reached at start is refused) and serve. */
  static async open(uri: string, opts: NbdDeviceOptions = {}): Promise<NbdDevice> {
    const name = redactUri(uri);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_REMOTE.timeoutMs;
    const poolOpts = {
      connections: opts.connections ?? DEFAULT_REMOTE.connections,
      connectTimeoutMs: Math.min(timeoutMs, 30_000),
    };
    let pool: ConnectionPool;
    try {
      pool = await ConnectionPool.connect(uri, poolOpts);
    } catch (err) {
      throw new NbdsnapError('NOT_FOUND', `remote ${name}: ${(err as Error).message}`, { cause: err });
    }
    const session = new RemoteSession(pool, {
      connect: () => ConnectionPool.connect(uri, poolOpts),
      isLoss: isConnectionLoss,
      timeoutMs,
      replayBudget: opts.replayBudget ?? DEFAULT_REMOTE.replayBudget,
      backoff: new Backoff(),
      name,
      ...(opts.onEvent === undefined ? {} : { onEvent: opts.onEvent }),
    });
    return new NbdDevice(name, pool, session, opts.readOnly === true);
  }

  private has(flag: number): boolean {
    return (this.flags & flag) !== 0;
  }

  private send(kind: OpKind, offset: number, length: number, flags = 0, data?: Buffer): Promise<unknown> {
    return this.session.submit({ kind, offset, length, flags, ...(data === undefined ? {} : { data }) });
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (length <= this.maxPayload) return (await this.send('read', offset, length)) as Buffer;
    const parts: Promise<unknown>[] = [];
    for (let at = 0; at < length; at += this.maxPayload) {
      parts.push(this.send('read', offset + at, Math.min(this.maxPayload, length - at)));
    }
    return Buffer.concat((await Promise.all(parts)) as Buffer[]);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const flag = fua && this.has(TF.SEND_FUA) ? CommandFlag.FUA : 0;
    // One piece: the caller's buffer itself (the replay log may then keep it without a copy,
    // src/remote/session.ts), and no extra promise.
    if (data.length <= this.maxPayload && (!fua || flag !== 0))
      return this.session.submit({ kind: 'write', offset, length: data.length, flags: flag, data }) as Promise<void>;
    return this.writePieces(offset, data, fua, flag);
  }

  private async writePieces(offset: number, data: Buffer, fua: boolean, flag: number): Promise<void> {
    const parts: Promise<unknown>[] = [];
    for (let at = 0; at < data.length; at += this.maxPayload) {
      const piece = data.subarray(at, Math.min(data.length, at + this.maxPayload));
      parts.push(this.send('write', offset + at, piece.length, flag, piece));
    }
    await Promise.all(parts);
    if (fua && flag === 0) await this.flush();
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    if (!this.has(TF.SEND_WRITE_ZEROES)) {
      if (options.fast) throw new NbdsnapError('ENOTSUP', 'the remote export cannot write zeroes fast');
      const zeroes = Buffer.alloc(Math.min(ZERO_STEP, length));
      const parts: Promise<void>[] = [];
      for (let at = 0; at < length; at += ZERO_STEP) {
        parts.push(this.write(offset + at, zeroes.subarray(0, Math.min(ZERO_STEP, length - at)), false));
      }
      await Promise.all(parts);
      if (options.fua) await this.flush();
      return;
    }
    if (options.fast && !this.has(TF.SEND_FAST_ZERO)) {
      throw new NbdsnapError('ENOTSUP', 'the remote export cannot tell fast zeroing apart');
    }
    let flags = options.mayTrim ? 0 : CommandFlag.NO_HOLE;
    if (options.fast) flags |= CommandFlag.FAST_ZERO;
    await this.ranged('zero', offset, length, flags, options.fua);
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    if (!this.has(TF.SEND_TRIM)) {
      if (fua) await this.flush();
      return;
    }
    await this.ranged('trim', offset, length, 0, fua);
  }

  /** WRITE_ZEROES or TRIM in pieces the wire can carry; FUA on each, or a flush after. */
  private async ranged(kind: 'zero' | 'trim', offset: number, length: number, flags: number, fua: boolean) {
    const fuaFlag = fua && this.has(TF.SEND_FUA) ? CommandFlag.FUA : 0;
    const parts: Promise<unknown>[] = [];
    for (let at = 0; at < length; at += MAX_RANGE) {
      parts.push(this.send(kind, offset + at, Math.min(MAX_RANGE, length - at), flags | fuaFlag));
    }
    await Promise.all(parts);
    if (fua && fuaFlag === 0) await this.flush();
  }

  async flush(): Promise<void> {
    if (!this.has(TF.SEND_FLUSH)) return; // durable: false says so
    await this.send('flush', 0, 0);
  }

  async cache(offset: number, length: number): Promise<void> {
    if (!this.has(TF.SEND_CACHE)) return;
    await this.send('cache', offset, Math.min(length, MAX_RANGE));
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const end = Math.min(this.size, offset + Math.min(length, 0xffff_f000));
    if (!this.blockStatus) return [{ length: end - offset, flags: DATA }];
    const got = (await this.send('status', offset, end - offset)) as Extent[];
    const out: Extent[] = [];
    let at = offset;
    for (const e of got) {
      if (at >= this.size || e.length === 0) break;
      const n = Math.min(e.length, this.size - at);
      out.push({ length: n, flags: e.flags & 3 });
      at += n;
    }
    if (out.length === 0) throw new NbdsnapError('EIO', `remote ${this.uri}: block status answered no extent`);
    return out;
  }

  /** What the session is doing (for status and tests). */
  get state(): string {
    return this.session.state;
  }

  async close(): Promise<void> {
    await this.session.close();
  }
}
