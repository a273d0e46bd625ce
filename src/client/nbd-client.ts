/**
 * nbdsnap's own NBD client, on top of the protocol package: fixed-newstyle handshake (structured
 * replies, metadata contexts, NBD_OPT_GO with block sizes), then pipelined requests matched to
 * their replies by cookie. Used by `nbdsnap backup` to read snapshots over NBD (so it works
 * against a remote server), by remote devices (src/remote), and by tests to send requests
 * ordinary clients do not. nbds:// and nbds+unix:// URIs (libnbd's conventions, see tls.ts) make
 * it STARTTLS before anything else.
 *
 * Replies are framed by reply-reader.ts: a plain connection reads (`onread`) into one reused
 * buffer and READ payloads straight into their reply buffers, so no chunk is allocated per socket
 * read and a large payload is not copied; a TLS connection hands its 'data' chunks to the same
 * reader (one copy).
 */
import { connect, type Socket } from 'node:net';
import { NbdsnapError } from '../errors.ts';
import {
  ClientFlag,
  ClientParser,
  Command,
  decodeOptionReply,
  type Extent,
  HandshakeFlag,
  Info,
  Option,
  type ServerMessage,
  serialize,
} from '../nbd-protocol/index.ts';
import { connectionError, isConnectionLoss, requestError } from './failures.ts';
import { type Endpoint, parseNbdUri } from './nbd-uri.ts';
import { type Pending, PendingReplies } from './pending-replies.ts';
import { ReplyReader } from './reply-reader.ts';
import { RequestWriter } from './request-writer.ts';
import { type ClientTls, clientTlsOptions, startClientTls, tlsErrorText } from './tls.ts';

export { type Endpoint, isConnectionLoss, parseNbdUri, requestError };

/** Handshake bytes are read into this (then copied: the parser keeps them). */
const HANDSHAKE_READ = 16 * 1024;

export interface ConnectOptions {
  exportName?: string;
  /** Ask for structured replies (default true). */
  structured?: boolean;
  /** Metadata contexts to select, e.g. ['base:allocation']. */
  metaContexts?: string[];
  /** Go on without the contexts of `metaContexts` the server does not offer (default: refuse). */
  optionalMetaContexts?: boolean;
  /**
   * Queries for NBD_OPT_LIST_META_CONTEXT, sent before any SET (e.g. ['x-nbdsnap:']); the names
   * the server lists end up in `listedContexts`. An empty array lists every context.
   */
  listMetaContexts?: string[];
  /** STARTTLS first, and refuse to go on without TLS (what nbds:// asks for). */
  tls?: ClientTls;
  /** Give up connecting (TCP connect and handshake) after this many ms (default: no limit). */
  connectTimeoutMs?: number;
  /**
   * Where structured READ replies go (contents undefined on return), e.g. the server's buffer
   * pool, which takes them back once they are sent on. Default: a buffer of the reply's own.
   */
  allocate?: (length: number) => Buffer;
}

/** The remote's NBD_INFO_BLOCK_SIZE (defaults when it sent none: any alignment, 32 MiB payloads). */
export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}

/** How long `close()` waits for the server to close after NBD_CMD_DISC before destroying the socket. */
const CLOSE_GRACE_MS = 5000;

export class NbdClient {
  size = 0;
  transmissionFlags = 0;
  structured = false;
  /** Selected contexts: id -> name. */
  readonly contexts = new Map<number, string>();
  /** Context names the server listed for `listMetaContexts` (empty if not asked or refused). */
  readonly listedContexts: string[] = [];
  /** The export's block sizes (NBD_INFO_BLOCK_SIZE), or the protocol's defaults. */
  blockSizes: BlockSizes = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  /** Resolves with the error that ended the connection (lost, closed, or `close()`). */
  readonly lost: Promise<Error>;
  private resolveLost: (err: Error) => void = () => undefined;
  /** The connection: the plain socket, then the TLSSocket over it after STARTTLS. */
  private socket: Socket;
  private readonly pending: PendingReplies;
  /** The handshake's messages; then `reader` frames the replies. */
  private readonly parser = new ClientParser();
  private readonly reader: ReplyReader;
  /** Requests out, one writev per turn of the event loop. */
  private readonly writer: RequestWriter;
  private transmission = false;
  /** Plain connections: where the socket reads during the handshake. */
  private readonly handshakeBuffer: Buffer | undefined;
  private nextCookie = 1n;
  private failure: Error | undefined;
  private handshakeWaiter: { resolve: (m: ServerMessage) => void; reject: (e: Error) => void } | undefined;
  private queued: ServerMessage[] = [];

  private constructor(socket: Socket, handshakeBuffer: Buffer | undefined, allocate?: (length: number) => Buffer) {
    this.socket = socket;
    this.handshakeBuffer = handshakeBuffer;
    this.lost = new Promise((resolve) => {
      this.resolveLost = resolve;
    });
    this.pending = new PendingReplies(allocate);
    this.reader = new ReplyReader(this.pending);
    this.writer = new RequestWriter(socket);
    this.attach(socket);
  }

  private readonly onDataBound = (chunk: Buffer) => this.onData(chunk);
  private readonly onErrorBound = (err: Error) =>
    this.fail(new NbdsnapError('EIO', `connection to the server lost: ${tlsErrorText(err)}`, { cause: err }));
  private readonly onCloseBound = () => this.fail(new NbdsnapError('EIO', 'connection closed by the server'));

  private attach(socket: Socket): void {
    if (this.handshakeBuffer === undefined) socket.on('data', this.onDataBound);
    socket.on('error', this.onErrorBound);
    socket.on('close', this.onCloseBound);
  }

  private detach(socket: Socket): void {
    socket.off('data', this.onDataBound);
    socket.off('error', this.onErrorBound);
    socket.off('close', this.onCloseBound);
  }

  static async connect(endpoint: Endpoint, opts: ConnectOptions = {}): Promise<NbdClient> {
    const where = 'path' in endpoint ? { path: endpoint.path } : { host: endpoint.host, port: endpoint.port };
    // A plain connection reads into the client's buffers. A TLS one is plain until STARTTLS, then
    // wrapped, and the TLS socket gives 'data' chunks: it reads those.
    const handshakeBuffer = opts.tls === undefined ? Buffer.allocUnsafe(HANDSHAKE_READ) : undefined;
    let client: NbdClient | undefined;
    const onread = {
      buffer: (): Uint8Array => client?.nextRead() ?? (handshakeBuffer as Buffer),
      callback: (n: number, buf: Uint8Array): boolean => {
        client?.onRead(n, buf);
        return true;
      },
    };
    const socket = connect(handshakeBuffer === undefined ? where : { ...where, onread });
    socket.setNoDelay?.(true);
    client = new NbdClient(socket, handshakeBuffer, opts.allocate);
    const made = client;
    const timer =
      opts.connectTimeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            const err = new NbdsnapError('EIO', `no answer from the server within ${opts.connectTimeoutMs} ms`);
            made.fail(err);
            socket.destroy(err);
          }, opts.connectTimeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', (err) => reject(new NbdsnapError('NOT_FOUND', `cannot connect: ${err.message}`)));
      });
      await made.handshake(opts, 'host' in endpoint ? endpoint.host : undefined);
    } catch (err) {
      made.socket.destroy(); // a failed handshake must not leave the socket (and the process) alive
      socket.destroy();
      throw err;
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
    return made;
  }

  static async open(uri: string, opts: Omit<ConnectOptions, 'exportName'> = {}): Promise<NbdClient> {
    const { endpoint, exportName, tls } = parseNbdUri(uri);
    return NbdClient.connect(endpoint, { ...opts, exportName, ...(tls === undefined ? {} : { tls }) });
  }

  /**
   * The metadata contexts an export lists for `queries` (NBD_OPT_LIST_META_CONTEXT), e.g.
   * nbdsnap's facts with ['x-nbdsnap:']. Connects, lists, and disconnects.
   */
  static async listMetaContexts(uri: string, queries: string[]): Promise<string[]> {
    const c = await NbdClient.open(uri, { listMetaContexts: queries });
    await c.close();
    return [...c.listedContexts];
  }

  /** Where the socket's next read goes (plain connections). */
  private nextRead(): Buffer {
    return this.transmission ? this.reader.next() : (this.handshakeBuffer as Buffer);
  }

  /** A read of a plain connection: `n` bytes at the start of `buf`. */
  private onRead(n: number, buf: Uint8Array): void {
    if (buf === this.handshakeBuffer)
      this.onData(Buffer.from(buf.subarray(0, n))); // read into again: copy
    else this.frame(() => this.reader.filled(buf, n));
  }

  /** Bytes of a 'data' event (TLS), or handshake bytes. */
  private onData(chunk: Buffer): void {
    if (this.transmission) {
      this.frame(() => this.reader.push(chunk));
      return;
    }
    this.parser.push(chunk);
    this.frame(() => {
      for (let m = this.parser.next(); m !== undefined; m = this.parser.next()) this.dispatch(m);
    });
  }

  /** Run framing work; a fault in the stream ends the connection. */
  private frame(work: () => void): void {
    try {
      work();
    } catch (err) {
      this.fail(err as Error);
      this.socket.destroy();
    }
  }

  private dispatch(m: ServerMessage): void {
    if (m.kind === 'simpleReply' || m.kind === 'chunk') throw new NbdsnapError('EIO', 'a reply during the handshake');
    if (this.handshakeWaiter !== undefined) {
      const w = this.handshakeWaiter;
      this.handshakeWaiter = undefined;
      w.resolve(m);
    } else this.queued.push(m);
  }

  private nextMessage(): Promise<ServerMessage> {
    const q = this.queued.shift();
    if (q !== undefined) return Promise.resolve(q);
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.handshakeWaiter = { resolve, reject };
    });
  }

  /** Send an option and collect its replies up to the final one. */
  private async option(code: number, bytes: Buffer) {
    this.socket.write(bytes);
    const replies = [];
    for (;;) {
      const m = await this.nextMessage();
      if (m.kind !== 'optionReply') throw new NbdsnapError('EIO', `unexpected ${m.kind} during handshake`);
      const r = decodeOptionReply(m.type, m.data);
      if (m.option !== code) throw new NbdsnapError('EIO', `reply to option ${m.option}, expected ${code}`);
      replies.push(r);
      if (r.reply === 'ACK' || r.reply === 'ERROR') return replies;
    }
  }

  /** STARTTLS, then the TLS handshake on the same socket; every later option goes over TLS. */
  private async startTls(tls: ClientTls, host: string | undefined): Promise<void> {
    const options = clientTlsOptions(tls, host); // a missing key file fails before anything is sent
    const r = await this.option(Option.STARTTLS, serialize.option(Option.STARTTLS));
    const last = r[r.length - 1];
    if (last?.reply !== 'ACK') {
      const why = last?.reply === 'ERROR' ? last.message || `error 0x${last.type.toString(16)}` : 'no reply';
      throw new NbdsnapError('EIO', `the server refused TLS (STARTTLS): ${why}`);
    }
    const plain = this.socket;
    this.detach(plain);
    this.socket = await startClientTls(plain, options);
    this.writer.use(this.socket);
    this.attach(this.socket);
  }

  private async handshake(opts: ConnectOptions, host: string | undefined): Promise<void> {
    const g = await this.nextMessage();
    if (g.kind !== 'greeting' || (g.handshakeFlags & HandshakeFlag.FIXED_NEWSTYLE) === 0) {
      throw new NbdsnapError('EIO', 'server does not speak fixed newstyle NBD');
    }
    const noZeroes = (g.handshakeFlags & HandshakeFlag.NO_ZEROES) !== 0;
    this.socket.write(serialize.clientFlags(ClientFlag.FIXED_NEWSTYLE | (noZeroes ? ClientFlag.NO_ZEROES : 0)));
    if (opts.tls !== undefined) await this.startTls(opts.tls, host);
    const name = opts.exportName ?? '';
    if (opts.structured !== false) {
      const r = await this.option(Option.STRUCTURED_REPLY, serialize.option(Option.STRUCTURED_REPLY));
      this.structured = r[r.length - 1]?.reply === 'ACK';
    }
    if (this.structured && opts.listMetaContexts !== undefined) {
      const rs = await this.option(
        Option.LIST_META_CONTEXT,
        serialize.optMetaContext(Option.LIST_META_CONTEXT, name, opts.listMetaContexts),
      );
      for (const r of rs) if (r.reply === 'META_CONTEXT') this.listedContexts.push(r.name);
    }
    if (this.structured && (opts.metaContexts?.length ?? 0) > 0) {
      const rs = await this.option(
        Option.SET_META_CONTEXT,
        serialize.optMetaContext(Option.SET_META_CONTEXT, name, opts.metaContexts ?? []),
      );
      for (const r of rs) {
        if (r.reply === 'META_CONTEXT') this.contexts.set(r.id, r.name);
        else if (opts.optionalMetaContexts === true) continue;
        else if (r.reply === 'ERROR' && r.message !== '')
          throw new NbdsnapError('NOT_FOUND', `export "${name}": ${r.message}`);
      }
      const missing = (opts.metaContexts ?? []).filter((c) => ![...this.contexts.values()].includes(c));
      if (missing.length > 0 && opts.optionalMetaContexts !== true)
        throw new NbdsnapError('NOT_FOUND', `server does not offer metadata context ${missing.join(', ')}`);
    }
    const rs = await this.option(Option.GO, serialize.optInfoGo(Option.GO, name, [Info.BLOCK_SIZE]));
    for (const r of rs) {
      if (r.reply === 'INFO_EXPORT') {
        this.size = r.size;
        this.transmissionFlags = r.transmissionFlags;
      } else if (r.reply === 'INFO_BLOCK_SIZE') {
        this.blockSizes = { minimum: r.minimum, preferred: r.preferred, maximum: r.maximum };
      } else if (r.reply === 'ERROR') {
        throw new NbdsnapError('NOT_FOUND', `export "${name}": ${r.message || `error 0x${r.type.toString(16)}`}`);
      }
    }
    if (this.queued.length > 0) throw new NbdsnapError('EIO', 'unexpected data after the handshake');
    this.transmission = true;
  }

  private fail(err: Error): void {
    // After close() the failure is already set, but requests still in flight must not hang
    // when the connection then drops: they are rejected with the error that ended it.
    this.failure ??= err;
    connectionError(err);
    this.resolveLost(this.failure);
    this.pending.failAll(err);
    // A connection lost during the handshake (a TLS alert, a server hanging up) ends it too.
    this.handshakeWaiter?.reject(err);
    this.handshakeWaiter = undefined;
  }

  private request(type: number, offset: number, length: number, flags = 0, data?: Buffer): Promise<unknown> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const cookie = this.nextCookie++;
    return new Promise((resolve, reject) => {
      const p: Pending = { type, offset, length, resolve, reject };
      if (type === Command.BLOCK_STATUS) p.extents = new Map();
      this.pending.add(cookie, p);
      this.writer.send(serialize.request(flags, type, cookie, offset, length), data);
    });
  }

  read(offset: number, length: number, flags = 0): Promise<Buffer> {
    return this.request(Command.READ, offset, length, flags) as Promise<Buffer>;
  }
  write(offset: number, data: Buffer, flags = 0): Promise<void> {
    return this.request(Command.WRITE, offset, data.length, flags, data) as Promise<void>; // resolves with nothing
  }
  async flush(): Promise<void> {
    await this.request(Command.FLUSH, 0, 0);
  }
  async trim(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(Command.TRIM, offset, length, flags);
  }
  async writeZeroes(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(Command.WRITE_ZEROES, offset, length, flags);
  }
  /** Block status for every selected context, by context name. */
  async blockStatus(offset: number, length: number, flags = 0): Promise<Map<string, Extent[]>> {
    const byId = (await this.request(Command.BLOCK_STATUS, offset, length, flags)) as Map<number, Extent[]>;
    return new Map([...byId].map(([id, e]) => [this.contexts.get(id) ?? String(id), e]));
  }
  /** Send any request (tests). */
  raw(type: number, offset: number, length: number, flags = 0, data?: Buffer): Promise<unknown> {
    return this.request(type, offset, length, flags, data);
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Hard disconnect: every request in flight is rejected (a connection loss), the socket destroyed. */
  destroy(reason = 'connection dropped by the client'): void {
    this.fail(new NbdsnapError('EIO', reason));
    this.socket.destroy();
  }

  /**
   * Soft disconnect: NBD_CMD_DISC, then wait for the server to close. A server that does not
   * close within `graceMs` (stopped, or not reading) has its socket destroyed: a stop of nbdsnap
   * never waits on a remote for longer than that.
   */
  async close(graceMs = CLOSE_GRACE_MS): Promise<void> {
    if (this.failure === undefined) {
      this.failure = new NbdsnapError('EIO', 'client closed');
      connectionError(this.failure);
      this.resolveLost(this.failure);
      this.socket.end(serialize.request(0, Command.DISC, this.nextCookie++, 0, 0));
    }
    if (this.socket.closed) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => this.socket.destroy(), graceMs);
      this.socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
