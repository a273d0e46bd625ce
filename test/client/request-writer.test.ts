/**
 * The client's request writer (src/client/request-writer.ts): the requests of one turn of the
 * event loop are written to a corked socket and leave together when it is uncorked, in the
 * turn's check phase; a later turn starts a new batch.
 */
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { RequestWriter } from '../../src/client/request-writer.ts';

/** What a socket was asked to do, in order. */
function recordingSocket(): { socket: Socket; calls: string[] } {
  const calls: string[] = [];
  const socket = {
    cork: () => calls.push('cork'),
    uncork: () => calls.push('uncork'),
    write: (b: Buffer) => calls.push(b.toString()),
  } as unknown as Socket;
  return { socket, calls };
}

const immediate = () => new Promise((r) => setImmediate(r));

describe('RequestWriter', () => {
  it('corks at the first request of a turn and uncorks once, after the turn', async () => {
    const { socket, calls } = recordingSocket();
    const w = new RequestWriter(socket);
    w.send(Buffer.from('h1'), Buffer.from('d1'));
    w.send(Buffer.from('h2'), undefined);
    await Promise.resolve(); // a request made from a promise callback of the same turn joins it
    w.send(Buffer.from('h3'), undefined);
    expect(calls).toEqual(['cork', 'h1', 'd1', 'h2', 'h3']);
    await immediate();
    expect(calls).toEqual(['cork', 'h1', 'd1', 'h2', 'h3', 'uncork']);
    w.send(Buffer.from('h4'), undefined);
    await immediate();
    expect(calls.slice(6)).toEqual(['cork', 'h4', 'uncork']);
  });

  it('uncorks the socket it corked, even if told to use another meanwhile', async () => {
    const a = recordingSocket();
    const b = recordingSocket();
    const w = new RequestWriter(a.socket);
    w.send(Buffer.from('x'), undefined);
    w.use(b.socket);
    await immediate();
    expect(a.calls).toEqual(['cork', 'x', 'uncork']);
    expect(b.calls).toEqual([]);
  });
});
