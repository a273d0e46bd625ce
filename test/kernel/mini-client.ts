/**
 * A deliberately tiny NBD client for the host side of the kernel-client tests: fixed newstyle
 * handshake with NBD_OPT_EXPORT_NAME, simple replies, one request at a time. It is independent of
 * src/ on purpose, so it checks the server from the outside as a plain third-party client would
 * ("is the server still serving other clients after the VM went away?").
 */
import { Socket } from 'node:net';

const NBDMAGIC = Buffer.from('NBDMAGIC');
const IHAVEOPT = Buffer.from('IHAVEOPT');
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT_EXPORT_NAME = 1;
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3 } as const;

export class NbdError extends Error {
  readonly errno: number | undefined;
  constructor(message: string, errno?: number) {
    super(message);
    this.errno = errno;
  }
}

export class MiniNbdClient {
  size = 0n;
  flags = 0;
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  private closed: Error | undefined;
  private nextHandle = 1n;
  private readonly sock: Socket;

  private constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (d: Buffer) => {
      this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    const onEnd = (err?: Error) => {
      this.closed ??= err ?? new NbdError('connection closed by the server');
      this.waiter?.();
    };
    sock.on('end', () => onEnd());
    sock.on('close', () => onEnd());
    sock.on('error', (e) => onEnd(e));
  }

  /** The client's own TCP port (identifies its socket in /proc/net/tcp). */
  get localPort(): number {
    return this.sock.localPort ?? 0;
  }

  static async connect(
    port: number,
    exportName: string,
    host = '127.0.0.1',
    timeoutMs = 10_000,
  ): Promise<MiniNbdClient> {
    const sock = new Socket();
    await new Promise<void>((res, rej) => {
      const t = setTimeout(() => {
        sock.destroy();
        rej(new NbdError(`connect to ${host}:${port} timed out`));
      }, timeoutMs);
      sock.once('error', (e) => {
        clearTimeout(t);
        rej(e);
      });
      sock.connect(port, host, () => {
        clearTimeout(t);
        res();
      });
    });
    sock.setNoDelay(true);
    const c = new MiniNbdClient(sock);
    await c.withTimeout(c.handshake(exportName), timeoutMs, 'handshake');
    return c;
  }

  private async withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    let t: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, rej) => {
      t = setTimeout(() => {
        this.sock.destroy();
        rej(new NbdError(`${what}: no answer from the server in ${ms} ms`));
      }, ms);
    });
    try {
      return await Promise.race([p, timeout]);
    } finally {
      clearTimeout(t);
    }
  }

  private async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw this.closed;
      await new Promise<void>((res) => {
        this.waiter = res;
      });
      this.waiter = undefined;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return Buffer.from(out);
  }

  private async handshake(name: string): Promise<void> {
    const hello = await this.read(18);
    if (!hello.subarray(0, 8).equals(NBDMAGIC) || !hello.subarray(8, 16).equals(IHAVEOPT)) {
      throw new NbdError(`not a newstyle NBD server: ${hello.toString('hex')}`);
    }
    const serverFlags = hello.readUInt16BE(16);
    const noZeroes = (serverFlags & FLAG_NO_ZEROES) !== 0;
    const cflags = Buffer.alloc(4);
    cflags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (noZeroes ? FLAG_NO_ZEROES : 0));
    const nameBuf = Buffer.from(name, 'utf8');
    const opt = Buffer.alloc(16);
    IHAVEOPT.copy(opt, 0);
    opt.writeUInt32BE(OPT_EXPORT_NAME, 8);
    opt.writeUInt32BE(nameBuf.length, 12);
    this.sock.write(Buffer.concat([cflags, opt, nameBuf]));
    const info = await this.read(10);
    this.size = info.readBigUInt64BE(0);
    this.flags = info.readUInt16BE(8);
    if (!noZeroes) await this.read(124);
  }

  private async request(type: number, offset: bigint, length: number, data?: Buffer): Promise<Buffer> {
    if (this.closed) throw this.closed;
    const handle = this.nextHandle++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(handle, 8);
    h.writeBigUInt64BE(offset, 16);
    h.writeUInt32BE(length, 24);
    this.sock.write(data ? Buffer.concat([h, data]) : h);
    if (type === CMD.DISC) return Buffer.alloc(0);
    const r = await this.withTimeout(this.read(16), 10_000, `command ${type}`);
    if (r.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new NbdError(`bad reply magic ${r.toString('hex')}`);
    if (r.readBigUInt64BE(8) !== handle)
      throw new NbdError(`reply for handle ${r.readBigUInt64BE(8)}, expected ${handle}`);
    const err = r.readUInt32BE(4);
    if (err !== 0) throw new NbdError(`command ${type} failed with NBD error ${err}`, err);
    return type === CMD.READ ? await this.withTimeout(this.read(length), 10_000, 'read payload') : Buffer.alloc(0);
  }

  pread(offset: number, length: number): Promise<Buffer> {
    return this.request(CMD.READ, BigInt(offset), length);
  }

  async pwrite(offset: number, data: Buffer): Promise<void> {
    await this.request(CMD.WRITE, BigInt(offset), data.length, data);
  }

  async flush(): Promise<void> {
    await this.request(CMD.FLUSH, 0n, 0);
  }

  /** NBD_CMD_DISC, then close the socket. */
  async disconnect(): Promise<void> {
    if (!this.closed) await this.request(CMD.DISC, 0n, 0).catch(() => undefined);
    this.sock.end();
    this.sock.destroy();
  }
}
