/**
 * A raw NBD client over a Node socket, built on the project's protocol library (serializers and
 * ClientParser): for what real clients never send (garbage, bad magics, half a WRITE, oversized
 * requests, unknown commands) and for byte-exact checks of option replies.
 *
 * One request at a time is the normal use (`request()`), but replies are matched by cookie, so
 * pipelined requests work too.
 */
import { connect, type Socket } from 'node:net';
import {
  ChunkType,
  ClientFlag,
  ClientParser,
  Command,
  decodeChunk,
  decodeOptionReply,
  isErrorReply,
  Option,
  type ParsedChunk,
  type ParsedOptionReply,
  Reply,
  ReplyFlag,
  type ServerMessage,
  serialize,
} from '../../src/nbd-protocol/index.ts';

export interface RequestReply {
  /** 0 on success, else the NBD error value. */
  error: number;
  /** READ data (simple reply or the OFFSET_DATA chunks put together). */
  data?: Buffer;
  /** Structured replies: every chunk, decoded. */
  chunks: ParsedChunk[];
}

export interface OptionAnswer {
  /** The final reply type: Reply.ACK or an NBD_REP_ERR_*. */
  type: number;
  replies: ParsedOptionReply[];
}

export class RawClient {
  readonly socket: Socket;
  private readonly reads = new Map<bigint, number>();
  private readonly parser = new ClientParser({ readLength: (c) => this.reads.get(c) });
  private readonly queue: ServerMessage[] = [];
  private wake: (() => void) | undefined;
  private ended = false;
  private fault: Error | undefined;
  private nextCookie = 1n;
  /** Resolves when the server (or we) closed the connection. */
  readonly closed: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => {
      this.parser.push(chunk);
      try {
        for (let m = this.parser.next(); m !== undefined; m = this.parser.next()) this.queue.push(m);
      } catch (err) {
        this.fault = err as Error;
      }
      this.wake?.();
    });
    socket.on('error', () => {});
    socket.once('close', () => {
      this.ended = true;
      this.wake?.();
    });
  }

  /** Connect over TCP (port) or a Unix socket (path). */
  static connect(target: { port: number } | { path: string }): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = 'port' in target ? connect({ host: '127.0.0.1', port: target.port }) : connect({ path: target.path });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawClient(s));
      });
    });
  }

  /** Connect, do the fixed-newstyle handshake and GO to `name`. */
  static async open(
    port: number,
    name: string,
    opts: { structured?: boolean; contexts?: string[] } = {},
  ): Promise<RawClient> {
    const c = await RawClient.connect({ port });
    await c.greet();
    if (opts.structured ?? true) await c.option(Option.STRUCTURED_REPLY);
    if (opts.contexts !== undefined) await c.metaContext(Option.SET_META_CONTEXT, name, opts.contexts);
    const go = await c.go(name);
    if (go.type !== Reply.ACK) throw new Error(`GO ${name} refused: ${JSON.stringify(go.replies)}`);
    return c;
  }

  /** NBD_OPT_GO (no info requests); on ACK the connection is in transmission. */
  async go(name: string): Promise<OptionAnswer> {
    const answer = await this.option(Option.GO, serialize.optInfoGo(Option.GO, name).subarray(16));
    if (answer.type === Reply.ACK) this.parser.startTransmission();
    return answer;
  }

  /** Write raw bytes; resolves once they are handed to the kernel (back-pressure respected). */
  send(bytes: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.write(bytes, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** The next message from the server; throws if the connection closes first. */
  async next(): Promise<ServerMessage> {
    for (;;) {
      const m = this.queue.shift();
      if (m !== undefined) return m;
      if (this.fault !== undefined) throw this.fault;
      if (this.ended) throw new Error('connection closed by the server');
      await new Promise<void>((r) => {
        this.wake = r;
      });
      this.wake = undefined;
    }
  }

  /** Read the greeting and send client flags (FIXED_NEWSTYLE | NO_ZEROES by default). */
  async greet(flags: number = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES): Promise<number> {
    const g = await this.next();
    if (g.kind !== 'greeting') throw new Error(`expected a greeting, got ${g.kind}`);
    await this.send(serialize.clientFlags(flags));
    return g.handshakeFlags;
  }

  /** Send an option and collect its replies up to the final ACK or error. */
  async option(code: number, data: Buffer = Buffer.alloc(0)): Promise<OptionAnswer> {
    await this.send(serialize.option(code, data));
    const replies: ParsedOptionReply[] = [];
    for (;;) {
      const m = await this.next();
      if (m.kind !== 'optionReply') throw new Error(`expected an option reply, got ${m.kind}`);
      if (m.option !== code) throw new Error(`reply for option ${m.option}, sent ${code}`);
      replies.push(decodeOptionReply(m.type, m.data));
      if (m.type === Reply.ACK || isErrorReply(m.type)) return { type: m.type, replies };
    }
  }

  metaContext(code: number, name: string, queries: string[]): Promise<OptionAnswer> {
    return this.option(code, serialize.optMetaContext(code, name, queries).subarray(16));
  }

  /** Send one request (a WRITE's data follows its header) and wait for its whole reply. */
  async request(
    type: number,
    args: { offset?: number; length?: number; flags?: number; data?: Buffer } = {},
  ): Promise<RequestReply> {
    const cookie = this.sendRequest(type, args);
    return this.reply(cookie);
  }

  /** Send a request without waiting; returns its cookie. */
  sendRequest(type: number, args: { offset?: number; length?: number; flags?: number; data?: Buffer } = {}): bigint {
    const cookie = this.nextCookie++;
    const length = args.length ?? args.data?.length ?? 0;
    if (type === Command.READ) this.reads.set(cookie, length);
    const header = serialize.request(args.flags ?? 0, type, cookie, args.offset ?? 0, length);
    this.socket.write(args.data === undefined ? header : Buffer.concat([header, args.data]));
    return cookie;
  }

  /** Wait for the reply to `cookie` (simple, or structured chunks up to DONE). */
  async reply(cookie: bigint): Promise<RequestReply> {
    const chunks: ParsedChunk[] = [];
    const data: Buffer[] = [];
    let error = 0;
    for (;;) {
      const m = await this.next();
      if (m.kind === 'simpleReply') {
        if (m.cookie !== cookie) throw new Error(`reply for cookie ${m.cookie}, waiting for ${cookie}`);
        this.reads.delete(cookie);
        return m.data === undefined ? { error: m.error, chunks } : { error: m.error, data: m.data, chunks };
      }
      if (m.kind !== 'chunk') throw new Error(`unexpected ${m.kind} in transmission`);
      if (m.cookie !== cookie) throw new Error(`chunk for cookie ${m.cookie}, waiting for ${cookie}`);
      const c = decodeChunk(m.type, m.data);
      chunks.push(c);
      if (c.chunk === 'ERROR' || c.chunk === 'ERROR_OFFSET') error = c.error;
      if (c.chunk === 'OFFSET_DATA') data.push(c.data);
      if ((m.flags & ReplyFlag.DONE) !== 0) {
        this.reads.delete(cookie);
        const hasData = m.type === ChunkType.OFFSET_DATA || data.length > 0;
        return hasData ? { error, data: Buffer.concat(data), chunks } : { error, chunks };
      }
    }
  }

  /** Orderly goodbye: NBD_CMD_DISC, then wait for the server to close. */
  async disconnect(): Promise<void> {
    if (!this.ended) this.socket.write(serialize.request(0, Command.DISC, 0n, 0, 0));
    this.socket.end();
    await this.closed;
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** True once the connection is closed. */
  get isClosed(): boolean {
    return this.ended;
  }
}
