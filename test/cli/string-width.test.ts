/**
 * src/cli/string-width.ts, which the bundle uses in place of the package string-width (for yargs'
 * help layout, without string-width's start-up cost), against the package itself.
 */
import realWidth from 'string-width';
import { describe, expect, it } from 'vitest';
import stringWidth from '../../src/cli/string-width.ts';

describe('stringWidth', () => {
  it('gives string-width answer for each code point of the BMP, the emoji blocks and the tags', () => {
    const differ: string[] = [];
    const ranges = [
      [0, 0xffff],
      [0x1f000, 0x1faff],
      [0x20000, 0x200ff],
      [0xe0000, 0xe01ef],
    ] as const;
    for (const [first, last] of ranges) {
      for (let cp = first; cp <= last; cp++) {
        if (cp >= 0xd800 && cp <= 0xdfff) continue; // lone surrogates: no code point
        const char = String.fromCodePoint(cp);
        if (stringWidth(char) !== realWidth(char)) differ.push(`U+${cp.toString(16)}`);
        const wide = { ambiguousIsNarrow: false };
        if (stringWidth(char, wide) !== realWidth(char, wide)) differ.push(`U+${cp.toString(16)} (ambiguous wide)`);
      }
    }
    expect(differ.slice(0, 20)).toEqual([]);
  });

  it('gives string-width answer for text: ASCII, ANSI colours, CJK, combining marks, a help line', () => {
    for (const text of [
      '',
      'nbdsnap backup <source> <file>',
      '\u001B[31mred\u001B[39m and plain',
      '\u001B]8;;https://example.com\u0007link\u001B]8;;\u0007',
      '日本語のテキスト',
      'e\u0301te\u0301',
      'tab\there',
      '  -V, --version  show the version                                   [boolean]',
      'Ünïcödé ✓ → ★',
    ]) {
      expect(stringWidth(text), JSON.stringify(text)).toBe(realWidth(text));
    }
    expect(stringWidth('\u001B[31mred\u001B[39m', { countAnsiEscapeCodes: true })).toBe(
      realWidth('\u001B[31mred\u001B[39m', { countAnsiEscapeCodes: true }),
    );
  });
});
