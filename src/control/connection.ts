/**
 * One client of the control socket. Reads request lines (each at most MAX_REQUEST_LINE bytes:
 * a longer one is answered with an error and the connection closed), runs up to MAX_IN_FLIGHT
 * requests at a time (reading pauses beyond that, and while the client does not read its
 * answers), and answers each by id. Back-pressure: no request is started while more than
 * MAX_UNSENT bytes of answers wait to be sent, and reading waits until every request read has
 * started, so a client that sends without reading holds at most one read's worth of request
 * lines, MAX_IN_FLIGHT requests and MAX_UNSENT bytes of answers. `stop()` is the graceful end:
 * streams (`events`) end with a final response, requests in flight are answered, then the socket
 * is closed.
 */
import type { Socket } from 'node:net';
import { errorMessage, NbdsnapError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { errorText } from '../log.ts';
import { type Command, checkArgNames } from './commands.ts';
import { LineReader, MAX_REQUEST_LINE, parseRequest, type Response } from './protocol.ts';

const MAX_IN_FLIGHT = 16;
/** An events client that leaves this much unread is cut off rather than buffered for. */
const MAX_UNREAD = 4 * 1024 * 1024;
/** Answers queued for the client beyond which no further request is started. */
const MAX_UNSENT = 1024 * 1024;

export class ControlConnection {
  readonly closed: Promise<void>;
  private readonly socket: Socket;
  private readonly commands: Map<string, Command>;
  private readonly log: Logger;
  private readonly reader = new LineReader(MAX_REQUEST_LINE);
  private inFlight = 0;
  /** Request lines read but not started (at most one chunk's worth: reading pauses meanwhile). */
  private readonly waiting: string[] = [];
  private stopping = false;
  private endStreams: () => void = () => undefined;
  private readonly ended: Promise<void>;

  constructor(socket: Socket, commands: Map<string, Command>, log: Logger) {
    this.socket = socket;
    this.commands = commands;
    this.log = log;
    this.ended = new Promise((resolve) => {
      this.endStreams = resolve;
    });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    void this.closed.then(() => this.endStreams());
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.flow());
  }

  /** Graceful end: streams finish, requests in flight are answered, then the socket closes. */
  stop(): void {
    this.stopping = true;
    for (const line of this.waiting.splice(0)) {
      const { id } = parseRequest(line);
      this.send({ id, ok: false, error: { code: 'ESHUTDOWN', message: 'the server is stopping' } });
    }
    this.endStreams();
    this.socket.pause();
    this.finishIfIdle();
  }

  destroy(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    let lines: string[];
    try {
      lines = this.reader.push(chunk);
    } catch (err) {
      // An over-long line: answer once, then drop this client only (nothing more is read or
      // started; answers still due are dropped with it).
      this.send({ id: 0, ok: false, error: { code: 'BAD_ARGUMENT', message: errorMessage(err) } });
      this.log.warn('control request too long, connection closed');
      this.stopping = true;
      this.waiting.length = 0;
      this.socket.pause();
      this.socket.end(() => this.socket.destroy());
      return;
    }
    this.waiting.push(...lines);
    this.flow();
  }

  /**
   * Start waiting requests while fewer than MAX_IN_FLIGHT run and the client reads its answers;
   * read more only once none wait and the answers are flushed below the socket's mark.
   */
  private flow(): void {
    while (
      this.waiting.length > 0 &&
      this.inFlight < MAX_IN_FLIGHT &&
      !this.stopping &&
      this.socket.writableLength <= MAX_UNSENT
    ) {
      void this.handle(this.waiting.shift() as string);
    }
    if (this.stopping || this.socket.destroyed) return;
    if (this.waiting.length > 0 || this.socket.writableNeedDrain) this.socket.pause();
    else this.socket.resume();
  }

  private async handle(line: string): Promise<void> {
    const req = parseRequest(line);
    if ('error' in req) {
      this.send({ id: req.id, ok: false, error: { code: req.error.code, message: req.error.message } });
      return;
    }
    this.inFlight += 1;
    try {
      const command = this.commands.get(req.cmd);
      if (command === undefined) throw new NbdsnapError('BAD_ARGUMENT', `unknown command "${req.cmd}"`);
      if (this.stopping) throw new NbdsnapError('ESHUTDOWN', 'the server is stopping');
      checkArgNames(req.cmd, command, req.args);
      const ctx = { emit: (event: unknown) => this.sendEvent(req.id, event), ended: this.ended };
      const result = await command.run(req.args, ctx);
      this.send({ id: req.id, ok: true, result: result ?? null });
    } catch (err) {
      const code = err instanceof NbdsnapError ? err.code : errnoName(err);
      if (!(err instanceof NbdsnapError))
        this.log.error('control command failed', { cmd: req.cmd, err: errorText(err) });
      this.send({ id: req.id, ok: false, error: { code, message: errorText(err) } });
    } finally {
      this.inFlight -= 1;
      this.flow();
      this.finishIfIdle();
    }
  }

  private sendEvent(id: number, event: unknown): void {
    this.send({ id, event });
    if (this.socket.writableLength > MAX_UNREAD) {
      this.log.warn('events client does not read its events, connection closed');
      this.socket.destroy();
    }
  }

  private send(msg: Response): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(`${JSON.stringify(msg)}\n`);
  }

  private finishIfIdle(): void {
    if (!this.stopping || this.inFlight > 0) return;
    // Close once the last answer is handed to the kernel; the server cuts off stragglers.
    this.socket.end(() => this.socket.destroy());
  }
}

/** A system error's errno name (EACCES, EROFS, ...) as the response code, else EIO. */
function errnoName(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : 'EIO';
}
