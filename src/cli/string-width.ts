/**
 * The columns a string takes on a terminal, for yargs' help layout (yargs, cliui and wrap-ansi
 * call it). scripts/bundle.mjs puts this in place of the package `string-width` in the bundle:
 * string-width 7 and 8 build an `Intl.Segmenter` and a `\p{RGI_Emoji}` expression as they load,
 * about 40 ms of every command's start-up, for help text that is plain ASCII. The rules are
 * string-width's, applied code point by code point instead of grapheme cluster by cluster:
 * printable ASCII is its length; ANSI escapes and invisible characters (control, format,
 * combining, default-ignorable) take 0 columns; a code point that is an emoji on its own takes 2;
 * any other its East Asian width (2 wide or fullwidth, 1 otherwise). For every single code point
 * the answer is string-width's (test/cli/string-width.test.ts checks those of the BMP and the emoji blocks); text of
 * several-code-point emoji (flags, ZWJ sequences) may count wider.
 */
import { eastAsianWidth } from 'get-east-asian-width';
import stripAnsi from 'strip-ansi';

const PRINTABLE_ASCII = /^[\u0020-\u007E]*$/;
const VISIBLE =
  /[^\p{Default_Ignorable_Code_Point}\p{Control}\p{Format}\p{Nonspacing_Mark}\p{Enclosing_Mark}\p{Surrogate}]/u;
/** Emoji that are RGI emoji by themselves (regional indicators are emoji only in pairs, as flags). */
const EMOJI = /^(?![\u{1F1E6}-\u{1F1FF}])\p{Emoji_Presentation}$/u;

export default function stringWidth(
  input: string,
  options: { ambiguousIsNarrow?: boolean; countAnsiEscapeCodes?: boolean } = {},
): number {
  if (typeof input !== 'string' || input.length === 0) return 0;
  const { ambiguousIsNarrow = true, countAnsiEscapeCodes = false } = options;
  let text = input;
  if (!countAnsiEscapeCodes && (text.includes('\u001B') || text.includes('\u009B'))) text = stripAnsi(text);
  if (PRINTABLE_ASCII.test(text)) return text.length;
  const eastAsian = { ambiguousAsWide: !ambiguousIsNarrow };
  let width = 0;
  for (const char of text) {
    if (!VISIBLE.test(char)) continue;
    width += EMOJI.test(char) ? 2 : eastAsianWidth(char.codePointAt(0) as number, eastAsian);
  }
  return width;
}
