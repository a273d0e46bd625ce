/**
 * The TLS rules of option haggling, without a socket: what `--tls=require` answers before
 * STARTTLS (ERR_TLS_REQD for everything, a hard close for EXPORT_NAME, nothing else: no names),
 * STARTTLS itself (ACK, then twice or after TLS is ERR_INVALID; ERR_POLICY under `--tls=off`),
 * the state the spec says STARTTLS resets; plus the PSK file parser, URI parsing of the client
 * and the plaintext warning.
 */
import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/block/memory-device.ts';
import { parseNbdUri } from '../../src/client/nbd-client.ts';
import { NbdsnapError } from '../../src/errors.ts';
import {
  ClientFlag,
  decodeOptionReply,
  Option,
  type OptionMessage,
  Reply,
  serialize,
} from '../../src/nbd-protocol/index.ts';
import { ExportRegistry } from '../../src/server/exports.ts';
import { Negotiator, type Step, type TlsPolicy } from '../../src/server/handshake.ts';
import { isLoopback, parsePskFile, plaintextWarning } from '../../src/server/tls.ts';

function negotiator(tls: TlsPolicy): Negotiator {
  const registry = new ExportRegistry();
  registry.add({
    name: 'secret-disk',
    description: 'the payroll database',
    device: new MemoryDevice(1 << 20),
    readOnly: false,
  });
  const n = new Negotiator(registry, () => false, tls);
  expect(n.clientFlags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)).toBeUndefined();
  return n;
}

/** An option as the parser frames it: the data after the 16-byte option header. */
const opt = (option: number, data: Buffer = Buffer.alloc(0)): OptionMessage => ({ kind: 'option', option, data });
const goData = (name: string) => serialize.optInfoGo(Option.GO, name, []).subarray(16);
const metaData = (name: string) =>
  serialize.optMetaContext(Option.SET_META_CONTEXT, name, ['base:allocation']).subarray(16);

/** Reply types of a step, in order (the option reply header's type field). */
const types = (s: Step): number[] => s.replies.map((b) => b.readUInt32BE(12));
const allBytes = (s: Step): string => Buffer.concat(s.replies).toString('latin1');

describe('--tls=require before STARTTLS', () => {
  const everyOption: [string, OptionMessage][] = [
    ['LIST', opt(Option.LIST)],
    ['INFO', opt(Option.INFO, goData('secret-disk'))],
    ['GO', opt(Option.GO, goData('secret-disk'))],
    ['GO of an unknown export', opt(Option.GO, goData('nope'))],
    ['STRUCTURED_REPLY', opt(Option.STRUCTURED_REPLY)],
    ['LIST_META_CONTEXT', opt(Option.LIST_META_CONTEXT, metaData('secret-disk'))],
    ['SET_META_CONTEXT', opt(Option.SET_META_CONTEXT, metaData('secret-disk'))],
    ['a malformed INFO', opt(Option.INFO, Buffer.from([0, 0, 0, 99]))],
    ['EXTENDED_HEADERS', opt(Option.EXTENDED_HEADERS)],
    ['an unknown option', opt(0x7654321, Buffer.from('abcd'))],
  ];
  for (const [what, msg] of everyOption) {
    it(`answers ${what} with ERR_TLS_REQD and nothing else`, () => {
      const step = negotiator('require').handle(msg);
      expect(types(step)).toEqual([Reply.ERR_TLS_REQD]);
      expect(step.outcome).toEqual({ next: 'continue' });
      expect(allBytes(step)).not.toMatch(/secret|payroll/);
    });
  }

  it('closes the connection on EXPORT_NAME, with no reply', () => {
    const step = negotiator('require').handle(opt(Option.EXPORT_NAME, Buffer.from('secret-disk')));
    expect(step.replies).toEqual([]);
    expect(step.outcome.next).toBe('close');
  });

  it('lets ABORT through', () => {
    const step = negotiator('require').handle(opt(Option.ABORT));
    expect(types(step)).toEqual([Reply.ACK]);
    expect(step.outcome.next).toBe('close');
  });

  it('refuses a client without fixed newstyle (it could never STARTTLS)', () => {
    const n = new Negotiator(new ExportRegistry(), () => false, 'require');
    expect(n.clientFlags(0)).toMatch(/TLS is required/);
  });
});

describe('STARTTLS', () => {
  it('is ERR_POLICY when TLS is off, and never ERR_TLS_REQD', () => {
    const n = negotiator('off');
    expect(types(n.handle(opt(Option.STARTTLS)))).toEqual([Reply.ERR_POLICY]);
    expect(types(n.handle(opt(Option.LIST)))).toContain(Reply.ACK);
  });

  for (const mode of ['on', 'require'] as const) {
    it(`is acknowledged under --tls=${mode}, then ERR_INVALID once TLS is up`, () => {
      const n = negotiator(mode);
      const first = n.handle(opt(Option.STARTTLS));
      expect(types(first)).toEqual([Reply.ACK]);
      expect(first.outcome).toEqual({ next: 'starttls' });
      n.tlsStarted();
      const again = n.handle(opt(Option.STARTTLS));
      expect(types(again)).toEqual([Reply.ERR_INVALID]);
      expect(again.outcome).toEqual({ next: 'continue' });
    });
  }

  it('with data is ERR_INVALID', () => {
    expect(types(negotiator('on').handle(opt(Option.STARTTLS, Buffer.from('x'))))).toEqual([Reply.ERR_INVALID]);
  });

  it('under --tls=on leaves plaintext options working', () => {
    const n = negotiator('on');
    const list = n.handle(opt(Option.LIST));
    expect(types(list)).toEqual([Reply.SERVER, Reply.ACK]);
  });

  it('serves everything once TLS is up under --tls=require', () => {
    const n = negotiator('require');
    n.handle(opt(Option.STARTTLS));
    n.tlsStarted();
    const list = n.handle(opt(Option.LIST));
    expect(types(list)).toEqual([Reply.SERVER, Reply.ACK]);
    const r = decodeOptionReply(Reply.SERVER, list.replies[0]?.subarray(20) as Buffer);
    expect(r).toMatchObject({ reply: 'SERVER', name: 'secret-disk' });
    expect(n.handle(opt(Option.GO, goData('secret-disk'))).outcome.next).toBe('transmission');
  });

  it('forgets structured replies and contexts negotiated before it (the spec MUST)', () => {
    const n = negotiator('on');
    expect(types(n.handle(opt(Option.STRUCTURED_REPLY)))).toEqual([Reply.ACK]);
    expect(types(n.handle(opt(Option.SET_META_CONTEXT, metaData('secret-disk'))))).toEqual([
      Reply.META_CONTEXT,
      Reply.ACK,
    ]);
    n.handle(opt(Option.STARTTLS));
    n.tlsStarted();
    // Structured replies are no longer on: SET_META_CONTEXT needs them again.
    expect(types(n.handle(opt(Option.SET_META_CONTEXT, metaData('secret-disk'))))).toEqual([Reply.ERR_INVALID]);
    const go = n.handle(opt(Option.GO, goData('secret-disk')));
    expect(go.outcome.next).toBe('transmission');
    if (go.outcome.next !== 'transmission') return;
    expect(go.outcome.session.structured).toBe(false);
    expect(go.outcome.session.contexts.size).toBe(0);
  });
});

describe('psktool key files', () => {
  it('reads identity:hexkey lines', () => {
    const keys = parsePskFile('alice:00ff10\n\nbob:abcdef01\r\n', 'k.psk');
    expect([...keys.keys()]).toEqual(['alice', 'bob']);
    expect(keys.get('alice')?.toString('hex')).toBe('00ff10');
  });

  for (const bad of ['alice', 'alice:', ':00ff', 'alice:0g', 'alice:abc', '']) {
    it(`refuses ${JSON.stringify(bad)} with the file and line`, () => {
      expect(() => parsePskFile(bad, 'k.psk')).toThrow(NbdsnapError);
      expect(() => parsePskFile(bad, 'k.psk')).toThrow(/k\.psk/);
    });
  }
});

describe('nbds URIs (libnbd conventions)', () => {
  it('nbds:// over TCP with certificates', () => {
    const u = parseNbdUri('nbds://example.org:10900/disk@snap?tls-certificates=/etc/pki/nbd');
    expect(u.endpoint).toEqual({ host: 'example.org', port: 10900 });
    expect(u.exportName).toBe('disk@snap');
    expect(u.tls).toEqual({ certificates: '/etc/pki/nbd', pskFile: undefined, username: undefined, verifyPeer: true });
  });

  it('nbds:// with PSK: the user part or tls-username is the identity', () => {
    expect(parseNbdUri('nbds://alice@127.0.0.1/x?tls-psk-file=/k.psk').tls).toMatchObject({
      pskFile: '/k.psk',
      username: 'alice',
    });
    expect(parseNbdUri('nbds://alice@127.0.0.1/x?tls-psk-file=/k.psk&tls-username=bob').tls?.username).toBe('bob');
  });

  it('nbds+unix:// and IPv6 literals', () => {
    const u = parseNbdUri('nbds+unix:///disk?socket=/run/nbd.sock&tls-certificates=/d&tls-verify-peer=false');
    expect(u.endpoint).toEqual({ path: '/run/nbd.sock' });
    expect(u.tls?.verifyPeer).toBe(false);
    expect(parseNbdUri('nbds://[::1]:10809/d').endpoint).toEqual({ host: '::1', port: 10809 });
  });

  it('plain nbd:// has no TLS', () => {
    expect(parseNbdUri('nbd://127.0.0.1/disk').tls).toBeUndefined();
    expect(() => parseNbdUri('https://127.0.0.1/disk')).toThrow(/not an NBD URI/);
  });
});

describe('the warning for a reachable plaintext listener', () => {
  it('is given for other addresses without TLS, not for loopback or under TLS', () => {
    for (const a of ['127.0.0.1', '127.0.0.2', '::1', 'localhost', '[::1]']) expect(isLoopback(a)).toBe(true);
    for (const a of ['0.0.0.0', '::', '192.168.1.10', 'example.org']) expect(isLoopback(a)).toBe(false);
    expect(plaintextWarning('0.0.0.0', 'off')).toMatch(/NBD has no authentication/);
    expect(plaintextWarning('0.0.0.0', 'off')).not.toContain('\n');
    expect(plaintextWarning('0.0.0.0', 'require')).toBeUndefined();
    expect(plaintextWarning('127.0.0.1', 'off')).toBeUndefined();
  });
});
