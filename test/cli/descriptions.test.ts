/** Which image each -D describes, as pure functions of the command line (no server). */
import { describe, expect, it } from 'vitest';
import { parseImage } from '../../src/cli/args.ts';
import {
  type Arity,
  defaultDescription,
  exportDescriptions,
  scanDescriptions,
} from '../../src/cli/serve-descriptions.ts';

const ARITY: Record<string, Arity> = { p: 1, port: 1, r: 0, 'read-only': 0, store: 'many', x: 1, config: 1 };
const arity = (name: string): Arity => ARITY[name] ?? 0;
const specs = (...images: string[]) => images.map((i) => parseImage(i));

function describeAll(tokens: string[], config?: Record<string, string>) {
  const images = tokens.filter((t, i) => !t.startsWith('-') && !['-p', '-D', '--store'].includes(tokens[i - 1] ?? ''));
  return exportDescriptions({
    specs: specs(...images.filter((t) => t.includes('='))),
    scanned: scanDescriptions(tokens, arity),
    config,
  });
}

describe('scanDescriptions', () => {
  it('pairs each -D with the image before it, in every spelling', () => {
    const s = scanDescriptions(['a=x', '-D', 'one', '-p', '10', 'b=y', '-Dtwo', 'c=z', '--description=three'], arity);
    expect(s).toEqual({
      images: 3,
      descriptions: [
        { after: 0, text: 'one' },
        { after: 1, text: 'two' },
        { after: 2, text: 'three' },
      ],
    });
  });

  it('skips option values, array options up to the next flag, and flags', () => {
    const s = scanDescriptions(
      ['-r', '--store', 's1', 's2', '-p', '5', 'a=x', '--description', 'A', '--', 'b=y'],
      arity,
    );
    expect(s).toEqual({ images: 2, descriptions: [{ after: 0, text: 'A' }] });
  });

  it('given the images yargs parsed, a value of an option it does not know is no image', () => {
    const tokens = ['a=x', '--new-option', 'value', '-D', 'A', 'b=y', '-D', 'B'];
    expect(scanDescriptions(tokens, arity).descriptions).toEqual([
      { after: 1, text: 'A' },
      { after: 2, text: 'B' },
    ]);
    expect(scanDescriptions(tokens, arity, ['a=x', 'b=y'])).toEqual({
      images: 2,
      descriptions: [
        { after: 0, text: 'A' },
        { after: 1, text: 'B' },
      ],
    });
  });

  it('a -D before any image follows none', () => {
    expect(scanDescriptions(['-D', 'x', 'a=x'], arity).descriptions).toEqual([{ after: -1, text: 'x' }]);
  });
});

describe('exportDescriptions', () => {
  it('one image: -D anywhere describes it', () => {
    expect(describeAll(['-D', 'only', 'a=x'])).toEqual({ a: 'only' });
  });

  it('several images: each -D its own, the others none (the default later)', () => {
    expect(describeAll(['a=x', '-D', 'A', 'b=y', 'c=z', '-D', 'C'])).toEqual({ a: 'A', c: 'C' });
  });

  it('refuses a -D before the first of several images, and two for one image', () => {
    expect(() => describeAll(['-D', 'A', 'a=x', 'b=y'])).toThrow('-D "A" must follow the image it describes');
    expect(() => describeAll(['a=x', '-D', 'A', '-D', 'B', 'b=y'])).toThrow('export "a" is given two descriptions');
    expect(() => describeAll(['a=x', '-D', 'A', '-D', 'B'])).toThrow('export "a" is given two descriptions');
  });

  it('config "descriptions" by name; a name that is no export is refused', () => {
    const config = exportDescriptions({
      specs: specs('a=x', 'b=y'),
      scanned: { images: 0, descriptions: [] },
      config: { b: 'B' },
    });
    expect(config).toEqual({ b: 'B' });
    expect(() =>
      exportDescriptions({ specs: specs('a=x'), scanned: { images: 0, descriptions: [] }, config: { z: 'Z' } }),
    ).toThrow('"descriptions" names "z", which is not an export');
    // Images from --config and a -D on the command line: only with one image.
    expect(() =>
      exportDescriptions({
        specs: specs('a=x', 'b=y'),
        scanned: { images: 0, descriptions: [{ after: -1, text: 'T' }] },
      }),
    ).toThrow('give their descriptions there');
  });
});

describe('defaultDescription', () => {
  it('names the export, never the path', () => {
    expect(defaultDescription(parseImage('disk=/srv/secret/disk.img'))).toBe('origin disk');
    expect(defaultDescription(parseImage('/srv/secret/disk.img'))).toBe('origin disk');
    expect(defaultDescription(parseImage('m=memory:1M'))).toBe('origin m (memory, 1048576 bytes)');
  });
});
