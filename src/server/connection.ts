/**
 * One client connection, from greeting to close. Bytes from the socket go into the protocol
 * parser; options go to the Negotiator, requests to Transmission. This file owns the socket:
 * writing replies, back-pressure, disconnects and graceful shutdown.
 *
 * - Requests are started as soon as they are parsed (pipelined) and may finish in any order.
 * - Back-pressure: reading pauses while too many requests or bytes are in flight, or while the
 *   socket's send buffer is full, so a fast client cannot make the server buffer without bound.
 * - Memory budget (memory-budget.ts; this connection's share: reservations.ts): a WRITE's payload
 *   is reserved before it is read, a READ's reply before it is produced; a refused reservation
 *   pauses reading. WRITE bytes come back when the request is done, READ bytes once the reply
 *   has been handed to the kernel.
 * - Reads (direct-read.ts, plain sockets in transmission): a WRITE's payload is read straight into
 *   its own buffer once reserved; headers and small requests into one reused buffer.
 * - Handshake timeout: a client that has not reached transmission in time is disconnected.
 * - A fatal protocol fault (bad magic, unknown client flags) closes this connection only.
 * - shutdown(): new requests get ESHUTDOWN, in-flight ones finish, the device is flushed, close.
 */
import type { Socket } from 'node:net';
import * as pool from '../block/buffer-pool.ts';
import { errorMessage } from '../errors.ts';
import type { Logger } from '../log.ts';
import {
  Command,
  HandshakeFlag,
  NbdError,
  NbdProtocolError,
  type RequestMessage,
  ServerParser,
  serialize,
} from '../nbd-protocol/index.ts';
import { PayloadReads, readInto } from './direct-read.ts';
import type { ExportRegistry } from './exports.ts';
import { Negotiator, type Session } from './handshake.ts';
import type { MemoryBudget } from './memory-budget.ts';
import { ReplyWriter } from './reply-writer.ts';
import { Reservations } from './reservations.ts';
import { type ServerTls, startServerTls } from './tls.ts';
import { Transmission } from './transmission.ts';
import { MAX_IO } from './validate.ts';

const MAX_INFLIGHT_REQUESTS = 256;
/** Bytes of requests in flight before reading pauses: bounds memory (nbdcopy keeps 64 MiB in flight). */
const MAX_INFLIGHT_BYTES = 8 * 1024 * 1024;
/** READ replies at least this large keep their reservation until flushed; smaller ones until queued. */
const FLUSH_TRACKED = 64 * 1024;

export interface ConnectionLimits {
  /** Memory shared by all connections of the server. */
  budget: MemoryBudget;
  /** Milliseconds from accept to the end of option haggling; 0 for none. */
  handshakeTimeoutMs: number;
}

export class Connection {
  readonly id: number;
  /** The client's socket: the accepted one, then the TLSSocket over it once STARTTLS is done. */
  private socket: Socket;
  private readonly log: Logger;
  private readonly tls: ServerTls | undefined;
  /** Between the STARTTLS ACK and the end of the TLS handshake: nothing is read or written. */
  private upgrading = false;
  private readonly parser = new ServerParser({ maxPayload: MAX_IO, allocate: pool.take });
  private readonly negotiator: Negotiator;
  private transmission: Transmission | undefined;
  private session: Session | undefined;
  private inflight = 0;
  private inflightBytes = 0;
  private readPaused = false;
  /** Writes replies to `socket`, whole and in order, corked per pass of the event loop. */
  private writer: ReplyWriter;
  private closing = false;
  private shuttingDown = false;
  private announced = false;
  private idle: (() => void) | undefined;
  private readonly share: Reservations;
  private handshakeTimer: NodeJS.Timeout | undefined;
  readonly closed: Promise<void>;

  constructor(
    id: number,
    socket: Socket,
    registry: ExportRegistry,
    log: Logger,
    limits: ConnectionLimits,
    tls?: ServerTls,
  ) {
    this.id = id;
    this.socket = socket;
    this.log = log;
    this.tls = tls;
    this.share = new Reservations(
      limits.budget,
      () => this.parser.awaiting,
      () => {
        this.updateFlow();
        if (!this.readPaused) this.pump();
      },
    );
    if (limits.handshakeTimeoutMs > 0) {
      this.handshakeTimer = setTimeout(() => {
        this.handshakeTimer = undefined;
        if (this.session !== undefined || this.closing) return;
        this.announce({ ended: `handshake timeout (${limits.handshakeTimeoutMs / 1000} s)` });
        this.destroy();
      }, limits.handshakeTimeoutMs);
      this.handshakeTimer.unref();
    }
    this.negotiator = new Negotiator(registry, () => this.shuttingDown, tls?.mode ?? 'off');
    // The accepted socket closes last, also under TLS (the TLSSocket's close closes it).
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.writer = new ReplyWriter(socket);
    this.attach(socket);
    socket.once('close', () => {
      this.closing = true;
      clearTimeout(this.handshakeTimer);
      this.share.close();
      this.announce({ ended: 'in the handshake' });
      this.log.debug('disconnected', { export: this.session?.entry.name });
    });
    socket.write(serialize.greeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES));
  }

  private readonly onDataBound = (chunk: Buffer) => this.onData(chunk);
  private readonly onDrainBound = () => this.updateFlow();

  private attach(socket: Socket): void {
    socket.on('data', this.onDataBound);
    socket.on('drain', this.onDrainBound);
    socket.on('error', (err) => this.log.debug('socket error', { err: err.message }));
  }

  /** The export this connection is attached to, once transmission started. */
  get exportName(): string | undefined {
    return this.session?.entry.name;
  }

  /** Graceful stop: refuse new work, finish what is in flight, flush, then hard-disconnect. */
  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    if (this.upgrading) {
      this.destroy(); // mid TLS handshake: nothing negotiated, nothing to flush
      return this.closed;
    }
    const blocked = this.share.unblock();
    if (blocked !== undefined) this.transmission?.refuse(blocked, NbdError.ESHUTDOWN, 'server is shutting down');
    if (this.session !== undefined) {
      await this.drain();
      try {
        await this.session.entry.device.flush();
      } catch (err) {
        this.log.error('flush at shutdown failed', { err: errorMessage(err) });
      }
    }
    // Close once the last reply is flushed, without waiting for the client's FIN: an idle
    // client (libnbd between calls) reads nothing, so it would hold the shutdown up until the
    // server's timeout. The spec asks for a hard disconnect at this point anyway.
    this.socket.end(() => this.socket.destroy());
    return this.closed;
  }

  destroy(): void {
    this.closing = true;
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    if (this.closing) return;
    this.parser.push(chunk);
    this.pump();
  }

  /** Handle every complete message buffered, unless paused for back-pressure. */
  private pump(): void {
    try {
      while (!this.closing && !this.readPaused) {
        const blocked = this.share.blocked;
        if (blocked !== undefined && !this.admit(blocked)) return;
        const msg = this.parser.next();
        if (msg === undefined) {
          if (!this.shuttingDown) this.share.reservePayload();
          if (this.share.waiting) this.updateFlow();
          return;
        }
        if (msg.kind === 'clientFlags') {
          const problem = this.negotiator.clientFlags(msg.flags);
          if (problem !== undefined) {
            this.abandon(problem);
            return;
          }
        } else if (msg.kind === 'option') {
          const step = this.negotiator.handle(msg);
          const out = step.outcome;
          if (out.next === 'starttls') {
            this.startTls(step.replies);
            return;
          }
          this.writeReply(step.replies);
          if (out.next === 'close') {
            this.finish(out.reason);
            return;
          }
          if (out.next === 'transmission') this.begin(out.session);
        } else {
          this.admit(msg);
        }
      }
    } catch (err) {
      if (!(err instanceof NbdProtocolError)) throw err;
      this.abandon(err.message);
    }
  }

  /**
   * STARTTLS was accepted: the ACK goes out in plaintext, then the TLS handshake runs on the same
   * socket, and option haggling resumes over TLS with the negotiated state reset. A failed
   * handshake (wrong CA, no client certificate, unknown PSK identity) ends this connection only.
   */
  private startTls(ack: Buffer[]): void {
    const tls = this.tls;
    if (tls === undefined) throw new Error('STARTTLS accepted without TLS settings');
    if (this.parser.buffered > 0) {
      this.abandon('data sent after STARTTLS before its reply');
      return;
    }
    const plain = this.socket;
    this.upgrading = true;
    plain.pause();
    plain.off('data', this.onDataBound);
    plain.off('drain', this.onDrainBound);
    this.writer.uncork();
    plain.write(Buffer.concat(ack), (err) => {
      if (err != null || this.closing) return;
      startServerTls(plain, tls).then(
        (secure) => {
          this.upgrading = false;
          if (this.closing) {
            secure.destroy();
            return;
          }
          this.socket = secure;
          this.writer = new ReplyWriter(secure);
          this.attach(secure);
          this.negotiator.tlsStarted();
          this.log.debug('TLS established', {
            protocol: secure.getProtocol(),
            cipher: secure.getCipher().name,
            ...(tls.kind === 'psk' ? {} : { peerCertificate: secure.getPeerCertificate().subject?.CN }),
          });
          this.readPaused = false;
          this.pump();
        },
        (err: unknown) => {
          this.upgrading = false;
          this.closing = true;
          this.log.warn('TLS handshake failed', { err: errorMessage(err) });
        },
      );
    });
  }

  private begin(session: Session): void {
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.session = session;
    this.transmission = new Transmission(session, (bufs) => this.writeReply(bufs), this.log);
    this.parser.startTransmission();
    const plain = (this.socket as { encrypted?: boolean }).encrypted !== true;
    if (plain && !this.readPaused) {
      const reads = new PayloadReads(
        this.parser,
        this.share,
        () => this.pump(),
        () => !this.closing,
      );
      readInto(this.socket, reads);
    }
    this.announce({
      structured: session.structured,
      contexts: [...session.contexts.values()].map((c) => c.name),
    });
  }

  /**
   * The one info line of a connection: when it attaches to an export, or when it closes without
   * ever attaching (a `--list`, an ABORT, a refused name). Client address and connection number
   * come from the logger (server.ts).
   */
  private announce(extra: Record<string, unknown>): void {
    if (this.announced) return;
    this.announced = true;
    const tls = (this.socket as { encrypted?: boolean }).encrypted === true;
    this.log.info('connected', { export: this.session?.entry.name ?? null, tls, ...extra });
  }

  /** Dispatch `req` if its bytes can be reserved (or were, as its payload arrived); else wait. */
  private admit(req: RequestMessage): boolean {
    // Refused or closing: nothing held.
    const cost = this.shuttingDown || req.type === Command.DISC ? 0 : Reservations.cost(req);
    if (!this.share.admit(req, cost)) {
      this.updateFlow();
      return false;
    }
    this.dispatch(req, cost);
    return true;
  }

  private dispatch(req: RequestMessage, cost: number): void {
    const tx = this.transmission as Transmission;
    if (req.type === Command.DISC) {
      this.closing = true; // nothing after DISC is read
      void this.drain().then(() => this.socket.end());
      return;
    }
    if (this.shuttingDown) {
      tx.refuse(req, NbdError.ESHUTDOWN, 'server is shutting down');
      return;
    }
    const bytes = req.data?.length ?? (req.type === Command.READ ? req.length : 0);
    this.inflight += 1;
    this.inflightBytes += bytes;
    this.updateFlow();
    // serve() never rejects; one callback for both outcomes (cheaper than finally's extra promises)
    const done = (): void => {
      pool.give(req.data); // the payload is no longer referenced once the request is done
      this.inflight -= 1;
      this.inflightBytes -= bytes;
      if (req.type === Command.READ && cost >= FLUSH_TRACKED) {
        // The reply is queued: its bytes come back once the kernel has taken them.
        this.writer.whenSent(() => this.share.release(cost));
      } else {
        this.share.release(cost);
      }
      if (this.inflight === 0) this.idle?.();
      this.updateFlow();
    };
    void tx.serve(req).then(done, done);
  }

  /** Pause reading while too much is in flight or queued for sending; resume when it clears. */
  private updateFlow(): void {
    const busy =
      this.share.waiting ||
      this.inflight >= MAX_INFLIGHT_REQUESTS ||
      this.inflightBytes >= MAX_INFLIGHT_BYTES ||
      this.socket.writableNeedDrain;
    if (busy && !this.readPaused) {
      this.readPaused = true;
      this.socket.pause();
    } else if (!busy && this.readPaused) {
      this.readPaused = false;
      this.socket.resume();
      this.pump();
    }
  }

  private drain(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.idle = resolve; // called again at the next idle moment: a no-op
    });
  }

  private writeReply(buffers: Buffer[]): void {
    this.writer.write(buffers);
  }

  /** Orderly close after ABORT or a refused EXPORT_NAME. */
  private finish(reason: string): void {
    this.closing = true;
    this.log.debug('closing', { reason });
    this.socket.end();
  }

  /** The peer broke the protocol: drop this connection, and only this one. */
  private abandon(reason: string): void {
    this.log.warn('protocol violation, dropping connection', { reason });
    this.closing = true;
    this.socket.destroy();
  }
}
