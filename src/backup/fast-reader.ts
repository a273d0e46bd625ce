/**
 * A read-only NBD connection for bulk reads, without structured replies: the socket reads
 * (`net` `onread`) go straight into the buffer of the reply being received, so a byte is
 * copied once, by the kernel, and no per-read chunk is allocated (no garbage for V8 to collect:
 * a generic client allocates a 64 KiB chunk per socket read and copies each reply out of them).
 * The handshake (fixed newstyle, NBD_OPT_GO) goes through the protocol package's parser; then
 * replies are framed here: a 16-byte simple reply header, then the payload of the READ it
 * answers. Plain TCP and Unix sockets only: `open` answers undefined for nbds:// (TLS), and the
 * caller uses the generic client.
 */
import { connect, type Socket } from 'node:net';
import { parseNbdUri, requestError } from '../client/nbd-client.ts';
import { errorMessage, NbdsnapError } from '../errors.ts';
import {
  ClientFlag,
  ClientParser,
  Command,
  decodeOptionReply,
  HandshakeFlag,
  NBD_SIMPLE_REPLY_MAGIC,
  Option,
  type ServerMessage,
  SIMPLE_REPLY_SIZE,
  serialize,
} from '../nbd-protocol/index.ts';

interface Pending {
  data: Buffer;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

const SCRATCH = 64 * 1024;

export class FastReader {
  size = 0;
  transmissionFlags = 0;
  private readonly socket: Socket;
  private readonly scratch = Buffer.allocUnsafeSlow(SCRATCH);
  private readonly header = Buffer.allocUnsafeSlow(SIMPLE_REPLY_SIZE);
  private readonly parser = new ClientParser();
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private corked = false;
  private failure: Error | undefined;
  /** Handshake messages not yet taken, and who waits for the next one. */
  private readonly queued: ServerMessage[] = [];
  private waiter: { resolve: (m: ServerMessage) => void; reject: (e: Error) => void } | undefined;
  /** Transmission: header bytes received, or the reply whose payload is arriving. */
  private transmission = false;
  private headerGot = 0;
  private current: Pending | undefined;
  private got = 0;
  /** The buffer the socket's next read goes to. */
  private handed: Uint8Array | undefined;

  private constructor(socket: Socket) {
    this.socket = socket;
  }

  /** Connect and enter transmission on `uri`'s export; undefined for a TLS URI. */
  static async open(uri: string): Promise<FastReader | undefined> {
    const { endpoint, exportName, tls } = parseNbdUri(uri);
    if (tls !== undefined) return undefined;
    let reader: FastReader | undefined;
    const onread = {
      buffer: () => (reader === undefined ? Buffer.allocUnsafe(SCRATCH) : reader.nextBuffer()),
      callback: (n: number, buf: Uint8Array): boolean => {
        reader?.onBytes(n, buf);
        return true;
      },
    };
    const socket = 'path' in endpoint ? connect({ path: endpoint.path, onread }) : connect({ ...endpoint, onread });
    reader = new FastReader(socket);
    const r = reader;
    socket.on('error', (err) => r.fail(new NbdsnapError('EIO', `connection to the server lost: ${err.message}`)));
    socket.on('close', () => r.fail(new NbdsnapError('EIO', 'connection closed by the server')));
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      });
      if ('port' in endpoint) socket.setNoDelay(true);
      await r.handshake(exportName);
    } catch (err) {
      socket.destroy();
      throw new NbdsnapError(err instanceof NbdsnapError ? err.code : 'EIO', `${uri}: ${errorMessage(err)}`);
    }
    return r;
  }

  /** Read into `into` (at least `length` bytes; a new buffer if not given); resolves with the bytes. */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (into !== undefined && into.length < length) return Promise.reject(new RangeError('read buffer too small'));
    const data = into === undefined ? Buffer.allocUnsafeSlow(length) : into.subarray(0, length);
    const cookie = this.nextCookie++;
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { data, resolve, reject });
      // requests made in the same tick leave in one write
      if (!this.corked) {
        this.corked = true;
        this.socket.cork();
        process.nextTick(() => {
          this.corked = false;
          this.socket.uncork();
        });
      }
      this.socket.write(serialize.request(0, Command.READ, cookie, offset, length));
    });
  }

  /** NBD_CMD_DISC, then wait for the server to close (as the generic client does). */
  async close(): Promise<void> {
    if (this.failure === undefined) {
      this.failure = new NbdsnapError('ESHUTDOWN', 'connection closed');
      this.socket.end(serialize.request(0, Command.DISC, this.nextCookie++, 0, 0));
    } else this.socket.destroy();
    await new Promise<void>((resolve) => (this.socket.closed ? resolve() : this.socket.once('close', () => resolve())));
  }

  /** Where the next socket read goes. */
  private nextBuffer(): Buffer {
    let b: Buffer;
    if (!this.transmission) b = this.scratch;
    else if (this.current !== undefined) b = this.current.data.subarray(this.got);
    else b = this.header.subarray(this.headerGot);
    this.handed = b;
    return b;
  }

  private onBytes(n: number, buf: Uint8Array): void {
    if (!this.transmission) {
      this.parser.push(Buffer.from(buf.subarray(0, n))); // the scratch is reused: copy
      try {
        for (let m = this.parser.next(); m !== undefined; m = this.parser.next()) this.deliver(m);
      } catch (err) {
        this.fail(err as Error);
      }
      return;
    }
    if (buf === this.handed) {
      this.advance(n);
      return;
    }
    // Bytes read into a buffer handed out before transmission began: put them where they belong.
    const src = Buffer.from(buf.buffer, buf.byteOffset, n);
    for (let at = 0; at < n && this.failure === undefined; ) {
      const dst = this.nextBuffer();
      const k = src.copy(dst, 0, at, Math.min(n, at + dst.length));
      at += k;
      this.advance(k);
    }
  }

  /** `n` more bytes are in place: of the payload being received, or of a reply header. */
  private advance(n: number): void {
    const cur = this.current;
    if (cur !== undefined) {
      this.got += n;
      if (this.got === cur.data.length) {
        this.current = undefined;
        cur.resolve(cur.data);
      }
      return;
    }
    this.headerGot += n;
    if (this.headerGot < SIMPLE_REPLY_SIZE) return;
    this.headerGot = 0;
    const h = this.header;
    const cookie = h.readBigUInt64BE(8);
    const p = this.pending.get(cookie);
    if (h.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC || p === undefined) {
      this.fail(
        new NbdsnapError('EIO', `unexpected reply (magic 0x${h.readUInt32BE(0).toString(16)}, cookie ${cookie})`),
      );
      this.socket.destroy();
      return;
    }
    this.pending.delete(cookie);
    const error = h.readUInt32BE(4);
    if (error !== 0) p.reject(requestError(error, ''));
    else if (p.data.length === 0) p.resolve(p.data);
    else {
      this.current = p;
      this.got = 0;
    }
  }

  private deliver(m: ServerMessage): void {
    if (this.waiter !== undefined) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve(m);
    } else this.queued.push(m);
  }

  private next(): Promise<ServerMessage> {
    const q = this.queued.shift();
    if (q !== undefined) return Promise.resolve(q);
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  private async handshake(name: string): Promise<void> {
    const g = await this.next();
    if (g.kind !== 'greeting' || (g.handshakeFlags & HandshakeFlag.FIXED_NEWSTYLE) === 0)
      throw new NbdsnapError('EIO', 'server does not speak fixed newstyle NBD');
    const noZeroes = (g.handshakeFlags & HandshakeFlag.NO_ZEROES) !== 0;
    this.socket.write(serialize.clientFlags(ClientFlag.FIXED_NEWSTYLE | (noZeroes ? ClientFlag.NO_ZEROES : 0)));
    this.socket.write(serialize.optInfoGo(Option.GO, name, []));
    for (;;) {
      const m = await this.next();
      if (m.kind !== 'optionReply' || m.option !== Option.GO)
        throw new NbdsnapError('EIO', `unexpected ${m.kind} during handshake`);
      const r = decodeOptionReply(m.type, m.data);
      if (r.reply === 'INFO_EXPORT') {
        this.size = r.size;
        this.transmissionFlags = r.transmissionFlags;
      } else if (r.reply === 'ERROR') {
        throw new NbdsnapError('NOT_FOUND', `export "${name}": ${r.message || `error 0x${r.type.toString(16)}`}`);
      } else if (r.reply === 'ACK') break;
    }
    if (this.queued.length > 0) throw new NbdsnapError('EIO', 'unexpected data after the handshake');
    this.transmission = true;
    this.handed = undefined; // the socket's next read still goes to the scratch buffer
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
    this.current?.reject(this.failure);
    this.current = undefined;
    this.waiter?.reject(this.failure);
    this.waiter = undefined;
  }
}
