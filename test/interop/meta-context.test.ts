/**
 * NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: what nbdsh (libnbd) sees, and the
 * exact option replies on the wire (libnbd 1.14 has no opt_set_meta_context, so the SET replies
 * are read with the raw client). Then BLOCK_STATUS must carry the id SET handed out.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Command, type Extent, Option, Reply } from '../../src/nbd-protocol/index.ts';
import { hasTool, MiB, nbdsh, pattern, sparseImage, stopQuietly, writeAt } from '../helpers/clients.ts';
import { RawClient } from '../helpers/raw-client.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';

/**
 * Extents cut at the request's end: without REQ_ONE the last extent may run past it (the spec
 * allows that), so only the part inside the request is compared.
 */
function clip(extents: readonly Extent[], length: number): Extent[] {
  const out: Extent[] = [];
  let at = 0;
  for (const e of extents) {
    if (at >= length) break;
    out.push({ length: Math.min(e.length, length - at), flags: e.flags });
    at += e.length;
  }
  return out;
}

describe('metadata contexts', () => {
  const dir = tempDir();
  const image = join(dir.path, 'disk.img');
  let srv: RunningServer;

  beforeAll(async () => {
    sparseImage(image);
    writeAt(image, 0, pattern(MiB));
    srv = await startServer([`disk=${image}`, 'other=memory:1M']);
  });

  afterAll(async () => {
    await stopQuietly(srv);
    dir.cleanup();
  });

  it.skipIf(!hasTool('nbdsh'))('lists contexts to nbdsh, with and without queries', async () => {
    const out = await nbdsh(`
h.set_opt_mode(True)
h.connect_uri(${JSON.stringify(srv.uri('disk'))})
def listed(*queries):
    h.clear_meta_contexts()
    for q in queries:
        h.add_meta_context(q)
    got = []
    n = h.opt_list_meta_context(lambda name: got.append(name))
    return [n, got]
out['all'] = listed()
out['base wildcard'] = listed('base:')
out['exact'] = listed('base:allocation')
out['qemu wildcard'] = listed('qemu:')
out['unknown leaf'] = listed('base:nothing')
out['unknown namespace'] = listed('x-nosuch:foo')
out['mixed'] = listed('x-nosuch:foo', 'base:')
h.opt_abort()
`);
    expect(out).toEqual({
      all: [1, ['base:allocation']],
      'base wildcard': [1, ['base:allocation']],
      exact: [1, ['base:allocation']],
      'qemu wildcard': [0, []],
      'unknown leaf': [0, []],
      'unknown namespace': [0, []],
      mixed: [1, ['base:allocation']],
    });
  });

  it.skipIf(!hasTool('nbdsh'))('selects base:allocation for nbdsh, and nothing unknown', async () => {
    const out = await nbdsh(`
h.add_meta_context('base:allocation')
h.add_meta_context('x-nosuch:foo')
h.connect_uri(${JSON.stringify(srv.uri('disk'))})
out['base'] = h.can_meta_context('base:allocation')
out['unknown'] = h.can_meta_context('x-nosuch:foo')
got = []
h.block_status(4 * (1 << 20), 0, lambda ctx, off, e, err: got.append([ctx, off, list(e)]))
out['status'] = got
h.shutdown()
`);
    expect(out).toMatchObject({ base: true, unknown: false });
    expect(out.status).toHaveLength(1);
    expect(out.status[0].slice(0, 2)).toEqual(['base:allocation', 0]);
    const flat = out.status[0][2] as number[];
    const pairs = flat.flatMap((v, i) => (i % 2 === 0 ? [{ length: v, flags: flat[i + 1] as number }] : []));
    expect(clip(pairs, 4 * MiB)).toEqual([
      { length: MiB, flags: 0 },
      { length: 3 * MiB, flags: 3 },
    ]);
  });

  it('answers SET_META_CONTEXT with one reply per selected context, then ACK', async () => {
    const c = await RawClient.connect({ port: srv.port });
    try {
      await c.greet();
      // Before structured replies: refused, and the session goes on.
      const early = await c.metaContext(Option.SET_META_CONTEXT, 'disk', ['base:allocation']);
      expect(early.type).toBe(Reply.ERR_INVALID);
      expect((await c.option(Option.STRUCTURED_REPLY)).type).toBe(Reply.ACK);

      const set = async (queries: string[], name = 'disk') =>
        (await c.metaContext(Option.SET_META_CONTEXT, name, queries)).replies;
      const exact = await set(['base:allocation']);
      expect(exact).toHaveLength(2);
      expect(exact[0]).toMatchObject({ reply: 'META_CONTEXT', name: 'base:allocation' });
      expect(exact[1]).toEqual({ reply: 'ACK' });
      const id = (exact[0] as { id: number }).id;
      expect(id).not.toBe(0);

      // An empty leaf, unknown leaves and namespaces select nothing, and are not errors.
      expect(await set(['base:'])).toEqual([{ reply: 'ACK' }]);
      expect(await set(['base:nothing', 'x-nosuch:foo'])).toEqual([{ reply: 'ACK' }]);
      expect(await set([])).toEqual([{ reply: 'ACK' }]);
      // The same context twice is selected once.
      const twice = await set(['base:allocation', 'base:allocation']);
      expect(twice.map((r) => r.reply)).toEqual(['META_CONTEXT', 'ACK']);
      // Unknown export, and a query without a namespace.
      expect((await c.metaContext(Option.SET_META_CONTEXT, 'nosuch', ['base:allocation'])).type).toBe(
        Reply.ERR_UNKNOWN,
      );
      expect((await c.metaContext(Option.SET_META_CONTEXT, 'disk', ['nocolon'])).type).toBe(Reply.ERR_INVALID);

      // LIST with the `base:` wildcard, on the wire: ids are 0 in LIST replies.
      const list = await c.metaContext(Option.LIST_META_CONTEXT, 'disk', ['base:']);
      expect(list.replies).toEqual([{ reply: 'META_CONTEXT', id: 0, name: 'base:allocation' }, { reply: 'ACK' }]);
      await c.option(Option.ABORT);
    } finally {
      c.destroy();
    }
  });

  it('sends BLOCK_STATUS chunks with the id SET handed out', async () => {
    const c = await RawClient.connect({ port: srv.port });
    try {
      await c.greet();
      await c.option(Option.STRUCTURED_REPLY);
      const set = await c.metaContext(Option.SET_META_CONTEXT, 'disk', ['x-nosuch:foo', 'base:allocation']);
      expect(set.replies.map((r) => r.reply)).toEqual(['META_CONTEXT', 'ACK']);
      const ctx = set.replies[0];
      if (ctx?.reply !== 'META_CONTEXT') throw new Error(`no context selected: ${JSON.stringify(set.replies)}`);
      const id = ctx.id;
      expect((await c.go('disk')).type).toBe(Reply.ACK);
      const r = await c.request(Command.BLOCK_STATUS, { offset: 0, length: 2 * MiB });
      expect(r.error).toBe(0);
      expect(r.chunks).toHaveLength(1);
      const chunk = r.chunks[0];
      if (chunk?.chunk !== 'BLOCK_STATUS') throw new Error(`not a BLOCK_STATUS chunk: ${JSON.stringify(chunk)}`);
      expect(chunk.contextId).toBe(id);
      expect(clip(chunk.extents, 2 * MiB)).toEqual([
        { length: MiB, flags: 0 },
        { length: MiB, flags: 3 },
      ]);
    } finally {
      await c.disconnect();
    }
  });

  it('refuses BLOCK_STATUS when no context was selected for this export', async () => {
    // SET named "other", GO named "disk": the selection does not carry over.
    const c = await RawClient.connect({ port: srv.port });
    try {
      await c.greet();
      await c.option(Option.STRUCTURED_REPLY);
      const sel = await c.metaContext(Option.SET_META_CONTEXT, 'other', ['base:allocation']);
      expect(sel.replies.map((r) => r.reply)).toEqual(['META_CONTEXT', 'ACK']);
      expect((await c.go('disk')).type).toBe(Reply.ACK);
      const r = await c.request(Command.BLOCK_STATUS, { offset: 0, length: 4096 });
      expect(r.error).toBe(22); // EINVAL
      const read = await c.request(Command.READ, { offset: 0, length: 4 });
      expect(read.error).toBe(0);
      expect(read.data?.toString('hex')).toBe(pattern(4).toString('hex'));
    } finally {
      await c.disconnect();
    }
  });
});
