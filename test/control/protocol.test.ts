/**
 * The control protocol's pure parts, without a server: line framing (split at every offset,
 * UTF-8 split inside a character, the length bound) and request parsing.
 */
import { describe, expect, it } from 'vitest';
import { LineReader, parseRequest } from '../../src/control/protocol.ts';

describe('LineReader', () => {
  const text = '{"id":1,"cmd":"status"}\n\n  {"id":2,"cmd":"snapshot.create","args":{"name":"é☃"}}\r\n{"id":3';
  const bytes = Buffer.from(text);

  it('gives the same lines wherever the stream is split', () => {
    for (let a = 0; a <= bytes.length; a++) {
      for (const b of [a, Math.min(bytes.length, a + 1), Math.min(bytes.length, a + 7)]) {
        const r = new LineReader();
        const lines = [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)].flatMap((p) => r.push(p));
        expect(lines, `split at ${a}, ${b}`).toEqual([
          '{"id":1,"cmd":"status"}',
          '{"id":2,"cmd":"snapshot.create","args":{"name":"é☃"}}',
        ]);
        // The unfinished tail comes out once its end arrives.
        expect(r.push(Buffer.from('}\n'))).toEqual(['{"id":3}']);
      }
    }
  });

  it('refuses a line longer than its bound, however it arrives, and then reads on', () => {
    const r = new LineReader(10);
    expect(r.push(Buffer.from('0123456789\n'))).toEqual(['0123456789']);
    expect(() => r.push(Buffer.from('0123456789A\n'))).toThrow('request line longer than 10 bytes');
    const pieces = new LineReader(10);
    expect(pieces.push(Buffer.from('01234'))).toEqual([]);
    expect(pieces.push(Buffer.from('56789'))).toEqual([]);
    expect(() => pieces.push(Buffer.from('A'))).toThrow('longer than 10 bytes');
    // What it held is dropped: a later line stands alone.
    expect(pieces.push(Buffer.from('ok\n'))).toEqual(['ok']);
  });
});

describe('parseRequest', () => {
  it('accepts a request, args defaulting to {}', () => {
    expect(parseRequest('{"id":4,"cmd":"status"}')).toEqual({ id: 4, cmd: 'status', args: {} });
    expect(parseRequest('{"id":0,"cmd":"x","args":{"a":1}}')).toEqual({ id: 0, cmd: 'x', args: { a: 1 } });
  });

  const bad: [string, number, string][] = [
    ['nope', 0, 'not a JSON object'],
    ['null', 0, 'not a JSON object'],
    ['"status"', 0, 'not a JSON object'],
    ['[{"id":1}]', 0, 'not a JSON object'],
    ['{"cmd":"status"}', 0, '"id" must be a non-negative integer'],
    ['{"id":-1,"cmd":"status"}', 0, '"id" must be a non-negative integer'],
    ['{"id":1.5,"cmd":"status"}', 0, '"id" must be a non-negative integer'],
    ['{"id":1e300,"cmd":"status"}', 0, '"id" must be a non-negative integer'],
    ['{"id":3}', 3, '"cmd" must be a command name'],
    ['{"id":3,"cmd":{}}', 3, '"cmd" must be a command name'],
    ['{"id":5,"cmd":"status","args":null}', 5, '"args" of status must be an object'],
    ['{"id":5,"cmd":"status","args":"x"}', 5, '"args" of status must be an object'],
  ];
  for (const [line, id, why] of bad) {
    it(`answers ${line} with id ${id}: ${why}`, () => {
      const r = parseRequest(line);
      expect('error' in r && { id: r.id, code: r.error.code, message: r.error.message }).toEqual({
        id,
        code: 'BAD_ARGUMENT',
        message: `bad request: ${why}`,
      });
    });
  }
});
