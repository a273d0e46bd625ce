/**
 * The connections to one remote export, as one RemoteLink for the session: one connection, or
 * `wanted` of them when the export advertises CAN_MULTI_CONN (then a FLUSH on any of them covers
 * the writes answered on all, which the session relies on). Every request goes to the connection
 * with the fewest in flight. The set is lost as a whole when any of its connections is lost.
 */
import { take } from '../block/buffer-pool.ts';
import { isConnectionLoss } from '../client/failures.ts';
import { NbdClient } from '../client/nbd-client.ts';
import { NbdsnapError } from '../errors.ts';
import { Command, type Extent, TransmissionFlag } from '../nbd-protocol/index.ts';
import type { RemoteLink, RemoteOp } from './link.ts';

export interface PoolOptions {
  /** Connections wanted when the export allows several (CAN_MULTI_CONN). */
  connections: number;
  /** Limit for connecting and the handshake, per connection. */
  connectTimeoutMs: number;
}

export const BASE_ALLOCATION = 'base:allocation';

export class ConnectionPool implements RemoteLink {
  readonly lost: Promise<Error>;
  private readonly clients: NbdClient[];

  private constructor(clients: NbdClient[]) {
    this.clients = clients;
    this.lost = Promise.race(clients.map((c) => c.lost));
  }

  /** Connect to `uri`; every connection must show the same export (size and flags). */
  static async connect(uri: string, opts: PoolOptions): Promise<ConnectionPool> {
    const connectOne = (connectTimeoutMs: number) =>
      NbdClient.open(uri, {
        metaContexts: [BASE_ALLOCATION],
        optionalMetaContexts: true,
        connectTimeoutMs,
        allocate: take, // the server gives read replies back to the pool once sent
      });
    const first = await connectOne(opts.connectTimeoutMs);
    const multi = (first.transmissionFlags & TransmissionFlag.CAN_MULTI_CONN) !== 0;
    const more = multi ? Math.max(0, opts.connections - 1) : 0;
    // More connections are a bonus: a server that takes fewer clients than it says (qemu-nbd
    // --shared) leaves the set smaller, not the device unreachable.
    const extraTimeout = Math.min(opts.connectTimeoutMs, 5000);
    const others = await Promise.allSettled(Array.from({ length: more }, () => connectOne(extraTimeout)));
    const clients = [first];
    for (const r of others) {
      if (r.status !== 'fulfilled') continue;
      if (r.value.size === first.size && r.value.transmissionFlags === first.transmissionFlags) clients.push(r.value);
      else {
        for (const c of [...clients, r.value]) c.destroy();
        throw new NbdsnapError('EIO', 'the connections to one export disagree about its size or flags');
      }
    }
    return new ConnectionPool(clients);
  }

  private get first(): NbdClient {
    return this.clients[0] as NbdClient;
  }
  get size(): number {
    return this.first.size;
  }
  get transmissionFlags(): number {
    return this.first.transmissionFlags;
  }
  get connections(): number {
    return this.clients.length;
  }
  get maxPayload(): number {
    return this.first.blockSizes.maximum;
  }
  get hasBaseAllocation(): boolean {
    return [...this.first.contexts.values()].includes(BASE_ALLOCATION);
  }

  send(op: RemoteOp): Promise<unknown> {
    let c = this.first;
    for (const x of this.clients) if (x.inFlight < c.inFlight) c = x;
    switch (op.kind) {
      case 'read':
        return c.read(op.offset, op.length, op.flags);
      case 'write':
        return c.write(op.offset, op.data as Buffer, op.flags);
      case 'zero':
        return c.writeZeroes(op.offset, op.length, op.flags);
      case 'trim':
        return c.trim(op.offset, op.length, op.flags);
      case 'flush':
        return c.flush();
      case 'cache':
        return c.raw(Command.CACHE, op.offset, op.length, op.flags);
      case 'status':
        return c.blockStatus(op.offset, op.length, op.flags).then((m): Extent[] => m.get(BASE_ALLOCATION) ?? []);
    }
  }

  destroy(reason: string): void {
    for (const c of this.clients) c.destroy(reason);
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close()));
  }
}

export { isConnectionLoss };
