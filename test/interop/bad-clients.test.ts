/**
 * Misbehaving clients, built byte by byte with the raw client: a disconnect in the middle of a
 * request, garbage in the handshake, a WRITE far over the maximum payload, a bad request magic,
 * unknown commands. Each may cost its own connection at most: a second connection opened at the
 * start (the witness) must keep being served throughout, and so must new ones (nbdinfo).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientFlag, Command, NbdError, Option, serialize } from '../../src/nbd-protocol/index.ts';
import {
  hasTool,
  MiB,
  ok,
  pattern,
  readAt,
  run,
  sameBytes,
  sparseImage,
  stopQuietly,
  writeAt,
} from '../helpers/clients.ts';
import { RawClient } from '../helpers/raw-client.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';

const SIZE = 64 * MiB;
const HEAD = pattern(MiB, 5);

describe('misbehaving clients', () => {
  const dir = tempDir();
  const image = join(dir.path, 'disk.img');
  let srv: RunningServer;
  let witness: RawClient;

  beforeAll(async () => {
    sparseImage(image, SIZE);
    writeAt(image, 0, HEAD);
    srv = await startServer([`disk=${image}`]);
    witness = await RawClient.open(srv.port, 'disk');
  });

  afterAll(async () => {
    witness?.destroy();
    await stopQuietly(srv);
    dir.cleanup();
  });

  /** The witness connection still reads the right data, and a new client gets served. */
  async function stillServing(): Promise<void> {
    const r = await witness.request(Command.READ, { offset: 4096, length: 4096 });
    expect(r.error).toBe(0);
    expect(sameBytes(r.data ?? Buffer.alloc(0), HEAD.subarray(4096, 8192))).toBe('equal');
    if (hasTool('nbdinfo')) expect(ok(await run('nbdinfo', ['--size', srv.uri('disk')])).trim()).toBe(String(SIZE));
    expect(srv.child.exitCode).toBeNull();
  }

  /** Resolves true when the server closed `c` (the test timeout catches a server that does not). */
  const droppedByServer = async (c: RawClient): Promise<boolean> => {
    await c.closed;
    return true;
  };

  it('survives a client that closes in the middle of a WRITE payload', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    const header = serialize.request(0, Command.WRITE, 1n, 8 * MiB, MiB);
    await c.send(Buffer.concat([header, Buffer.alloc(MiB / 2, 0xee)]));
    c.destroy();
    await c.closed;
    await stillServing();
    // Half a WRITE is not a WRITE: nothing of it reached the image.
    expect(sameBytes(readAt(image, 8 * MiB, MiB), Buffer.alloc(MiB))).toBe('equal');
  });

  it('survives a client that closes in the middle of a header, or of the handshake', async () => {
    const a = await RawClient.open(srv.port, 'disk');
    await a.send(serialize.request(0, Command.READ, 1n, 0, 4096).subarray(0, 13));
    a.destroy();
    const b = await RawClient.connect({ port: srv.port });
    await b.next(); // greeting
    await b.send(Buffer.from([0, 0]));
    b.destroy();
    const d = await RawClient.connect({ port: srv.port });
    await d.greet();
    await d.send(serialize.option(Option.GO, Buffer.alloc(40)).subarray(0, 30));
    d.destroy();
    await Promise.all([a.closed, b.closed, d.closed]);
    await stillServing();
  });

  it('survives a client that leaves while its 32 MiB READ is being answered', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    c.sendRequest(Command.READ, { offset: 0, length: 32 * MiB });
    c.sendRequest(Command.READ, { offset: 32 * MiB, length: 32 * MiB });
    await new Promise((r) => setImmediate(r));
    c.destroy();
    await c.closed;
    await stillServing();
  });

  it('drops a client that sends random bytes instead of a handshake', async () => {
    const c = await RawClient.connect({ port: srv.port });
    // Seed 3 starts with client flags that have unknown bits set.
    const junk = pattern(4096, 3);
    expect(junk.readUInt32BE(0) & ~3).not.toBe(0);
    c.socket.write(junk);
    expect(await droppedByServer(c)).toBe(true);
    // The greeting came, and nothing else did.
    expect((await c.next()).kind).toBe('greeting');
    await expect(c.next()).rejects.toThrow('connection closed');
    await stillServing();
  });

  it('drops a client whose option has a bad magic, or is absurdly long', async () => {
    const bad = await RawClient.connect({ port: srv.port });
    await bad.greet();
    const opt = serialize.option(Option.LIST);
    opt.write('NOTMAGIC', 0, 'latin1');
    bad.socket.write(opt);
    const huge = await RawClient.connect({ port: srv.port });
    await huge.greet();
    const header = serialize.option(Option.INFO);
    header.writeUInt32BE(0x7fffffff, 12); // a 2 GiB option payload announced
    huge.socket.write(header);
    const flags = await RawClient.connect({ port: srv.port });
    await flags.greet(ClientFlag.FIXED_NEWSTYLE | 0x80);
    expect(await Promise.all([bad, huge, flags].map(droppedByServer))).toEqual([true, true, true]);
    await expect(bad.next()).rejects.toThrow('connection closed');
    await stillServing();
  });

  it('answers an unknown option with ERR_UNSUP and goes on negotiating', async () => {
    const c = await RawClient.connect({ port: srv.port });
    await c.greet();
    const r = await c.option(4242, Buffer.from('whatever'));
    expect(r.type).toBe(0x80000001); // NBD_REP_ERR_UNSUP
    const list = await c.option(Option.LIST);
    expect(list.replies.map((x) => x.reply)).toEqual(['SERVER', 'ACK']);
    expect((await c.go('disk')).type).toBe(1);
    const read = await c.request(Command.READ, { offset: 0, length: 16 });
    expect(read.data?.toString('hex')).toBe(HEAD.subarray(0, 16).toString('hex'));
    await c.disconnect();
  });

  it('skips a 100 MiB WRITE (over the maximum) with an error, or drops only that client', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    const cookie = c.sendRequest(Command.WRITE, { offset: 0, length: 100 * MiB });
    const chunk = Buffer.alloc(MiB, 0xee);
    const sent = (async () => {
      for (let i = 0; i < 100 && !c.isClosed; i++) await c.send(chunk).catch(() => {});
    })();
    let reply: Awaited<ReturnType<RawClient['reply']>> | undefined;
    try {
      reply = await c.reply(cookie);
    } catch {
      reply = undefined; // dropped: allowed, as long as only this client goes
    }
    await sent;
    if (reply !== undefined) {
      expect(reply.error).toBe(NbdError.EINVAL);
      // The stream is still in sync: the next request on this connection works.
      const read = await c.request(Command.READ, { offset: 0, length: 4096 });
      expect(read.error).toBe(0);
      expect(sameBytes(read.data ?? Buffer.alloc(0), HEAD.subarray(0, 4096))).toBe('equal');
      await c.disconnect();
    }
    // None of the refused payload was written.
    expect(sameBytes(readAt(image, 0, MiB), HEAD)).toBe('equal');
    await stillServing();
  });

  it('refuses oversized READs without losing the connection', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    expect((await c.request(Command.READ, { offset: 0, length: 100 * MiB })).error).toBe(NbdError.EINVAL);
    const df = await c.request(Command.READ, { offset: 0, length: 100 * MiB, flags: 0x04 });
    expect([NbdError.EINVAL, NbdError.EOVERFLOW]).toContain(df.error);
    expect((await c.request(Command.READ, { offset: 0, length: 8 })).data?.toString('hex')).toBe(
      HEAD.subarray(0, 8).toString('hex'),
    );
    await c.disconnect();
    await stillServing();
  });

  it('answers unknown commands with EINVAL and stays usable', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    expect((await c.request(42, { offset: 0, length: 4096 })).error).toBe(NbdError.EINVAL);
    expect((await c.request(Command.RESIZE, { offset: SIZE, length: 0 })).error).toBe(NbdError.EINVAL);
    expect((await c.request(0xffff, { offset: 0, length: 0 })).error).toBe(NbdError.EINVAL);
    const read = await c.request(Command.READ, { offset: 0, length: 8 });
    expect(read.data?.toString('hex')).toBe(HEAD.subarray(0, 8).toString('hex'));
    await c.disconnect();
    await stillServing();
  });

  it('drops a client that sends a bad request magic, and only that client', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    const req = serialize.request(0, Command.READ, 7n, 0, 4096);
    req.writeUInt32BE(0xdeadbeef, 0);
    c.socket.write(req);
    expect(await droppedByServer(c)).toBe(true);
    await expect(c.next()).rejects.toThrow('connection closed');
    await stillServing();
  });

  it('logged every violation as a warning, with no error and no stack trace', () => {
    const log = srv.stderr();
    expect(log).toContain('"msg":"protocol violation, dropping connection"');
    expect(log).not.toContain('"level":"error"');
    expect(log).not.toMatch(/\n\s+at /);
  });
});
