/**
 * The control socket server: `serve --control PATH`. One JSON request per line, one response
 * per request; `events` streams events until the client disconnects. Commands map onto the
 * snapshot manager; every failure becomes an error response with the NbdsnapError code.
 */
import { chmodSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { errorMessage, NbdsnapError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { takeSocketPath } from '../server/unix-socket.ts';
import type { SnapshotManager } from '../snapshot/manager.ts';
import { StoreSpace } from '../store/space.ts';
import { type Request, type Response, splitLines } from './protocol.ts';

type Handler = (args: Record<string, unknown>, socket: Socket, id: number) => Promise<unknown>;

export class ControlServer {
  private readonly server: Server;
  private readonly handlers: Record<string, Handler>;
  private readonly log: Logger;

  constructor(manager: SnapshotManager, log: Logger, extra: Record<string, Handler> = {}) {
    this.log = log;
    this.handlers = {
      status: async () => manager.status(),
      'snapshot.create': async (a) => {
        const snaps = await manager.createSnapshot(
          strings(a.devices, 'devices'),
          str(a.name, 'name'),
          a.writable === true,
        );
        return snaps.map((s) => `${s.origin.name}@${s.name}`);
      },
      'snapshot.list': async () => manager.list(),
      'snapshot.delete': async (a) => manager.deleteSnapshot(str(a.device, 'device'), str(a.name, 'name')),
      'store.append': async (a) => manager.appendStore(StoreSpace.resolve(str(a.range, 'range'))),
      'store.status': async () => manager.storeStatus(),
      'store.scrub': (_a, socket, id) =>
        manager.scrub((p) => send(socket, { id, event: { type: 'scrub-progress', ...p } })),
      'merge.start': async (a) =>
        manager.startMerge(str(a.device, 'device'), str(a.name, 'name'), a.onNextStart === true),
      'merge.status': async () => manager.mergeStatus(),
      'cbt.changed': async (a) =>
        manager.cbt.changed(
          str(a.device, 'device'),
          str(a.from, 'from'),
          a.to === undefined ? undefined : str(a.to, 'to'),
        ),
      'cbt.markDirty': async (a) => manager.markDirty(str(a.device, 'device'), Number(a.offset), Number(a.length)),
      events: (_a, socket, id) =>
        new Promise<never>(() => {
          const off = manager.events.subscribe((event) => send(socket, { id, event }));
          socket.once('close', off);
        }),
      ...extra,
    };
    this.server = createServer((socket) => this.accept(socket));
  }

  async listen(path: string): Promise<void> {
    await takeSocketPath(path, 'the control socket');
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new NbdsnapError('BAD_ARGUMENT', `cannot create control socket ${path}: ${err.message}`)),
      );
      this.server.listen({ path }, resolve);
    });
    chmodSync(path, 0o600);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    let buffer = '';
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk: Buffer) => {
      buffer = splitLines(buffer + chunk.toString('utf8'), (line) => void this.handle(line, socket));
      if (buffer.length > 1024 * 1024) socket.destroy();
    });
  }

  private async handle(line: string, socket: Socket): Promise<void> {
    let req: Request;
    try {
      req = JSON.parse(line) as Request;
      if (typeof req.id !== 'number' || typeof req.cmd !== 'string') throw new Error('need "id" and "cmd"');
    } catch (err) {
      send(socket, { id: 0, ok: false, error: { code: 'BAD_ARGUMENT', message: `bad request: ${errorMessage(err)}` } });
      return;
    }
    const handler = this.handlers[req.cmd];
    if (handler === undefined) {
      send(socket, { id: req.id, ok: false, error: { code: 'BAD_ARGUMENT', message: `unknown command "${req.cmd}"` } });
      return;
    }
    try {
      const result = await handler(req.args ?? {}, socket, req.id);
      send(socket, { id: req.id, ok: true, result: result ?? null });
    } catch (err) {
      const code = err instanceof NbdsnapError ? err.code : 'EIO';
      if (!(err instanceof NbdsnapError))
        this.log.error('control command failed', { cmd: req.cmd, err: errorMessage(err) });
      send(socket, { id: req.id, ok: false, error: { code, message: errorMessage(err) } });
    }
  }
}

function send(socket: Socket, msg: Response): void {
  if (!socket.destroyed) socket.write(`${JSON.stringify(msg)}\n`);
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw new NbdsnapError('BAD_ARGUMENT', `"${what}" must be a non-empty string`);
  return v;
}

function strings(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || v.length === 0) throw new NbdsnapError('BAD_ARGUMENT', `"${what}" must be a non-empty list`);
  return v.map((x) => str(x, what));
}
