/**
 * Export descriptions for `serve`: `-D TEXT` describes the image it follows on the command line
 * (`serve a=a.img -D "first" b=b.img -D "second"`), or the only image wherever it is; the
 * config file's `"descriptions": {"NAME": "TEXT"}` names them. yargs does not keep the order of
 * options and positionals, so the command line is scanned here, knowing which options take a
 * value. The default description names what an export is, never a server path.
 */
import { NbdsnapError } from '../errors.ts';
import type { ImageSpec } from './args.ts';

/** How many values an option takes: 0 (a flag), 1, or 'many' (an array option: up to the next "-"). */
export type Arity = 0 | 1 | 'many';

const DESCRIPTION = new Set(['D', 'description']);

export interface Scanned {
  /** How many positionals (images) the command line holds. */
  images: number;
  /** Each -D value with the index of the image it follows, or -1 when it comes before any. */
  descriptions: { after: number; text: string }[];
}

/**
 * The images and -D values of `tokens`, the arguments after `serve`. With `images` (the images
 * yargs parsed, in order), a bare token counts as an image only if it is the next of them, so an
 * option whose arity is unknown here cannot shift the pairing.
 */
export function scanDescriptions(tokens: string[], arity: (name: string) => Arity, images?: string[]): Scanned {
  const found: { after: number; text: string }[] = [];
  let seen = 0;
  let i = 0;
  const skipValues = (n: Arity) => {
    if (n === 1) i += 1;
    else if (n === 'many') while (i + 1 < tokens.length && !(tokens[i + 1] as string).startsWith('-')) i += 1;
  };
  for (; i < tokens.length; i += 1) {
    const t = tokens[i] as string;
    if (t === '--') {
      seen += tokens.length - i - 1;
      break;
    }
    const long = /^--([^=]+)(=(.*))?$/s.exec(t);
    const short = /^-([^-])(.*)$/s.exec(t);
    if (long !== null) {
      const name = long[1] as string;
      if (DESCRIPTION.has(name)) {
        found.push({ after: seen - 1, text: long[2] !== undefined ? (long[3] as string) : (tokens[++i] ?? '') });
      } else if (long[2] === undefined && !name.startsWith('no-')) skipValues(arity(name));
    } else if (short !== null) {
      const [, letter, rest] = short as unknown as [string, string, string];
      if (DESCRIPTION.has(letter)) {
        found.push({ after: seen - 1, text: rest !== '' ? rest.replace(/^=/, '') : (tokens[++i] ?? '') });
      } else if (rest === '') skipValues(arity(letter));
    } else if (images === undefined || t === images[seen]) {
      seen += 1;
    }
  }
  return { images: seen, descriptions: found };
}

/**
 * Each export's description, by export name. `specs` are the images in order, from the command
 * line (then a -D goes with the image it follows) or from --config (then its "descriptions").
 */
export function exportDescriptions(opts: {
  specs: ImageSpec[];
  scanned: Scanned;
  config?: Record<string, string> | undefined;
}): Record<string, string> {
  const { specs } = opts;
  const scanned = opts.scanned.descriptions;
  const fromCommandLine = opts.scanned.images === specs.length;
  const out: Record<string, string> = {};
  for (const [name, text] of Object.entries(opts.config ?? {})) {
    if (!specs.some((s) => s.name === name)) {
      throw new NbdsnapError('BAD_ARGUMENT', `"descriptions" names "${name}", which is not an export`);
    }
    out[name] = text;
  }
  for (const d of scanned) {
    let spec: ImageSpec | undefined;
    if (specs.length === 1) spec = specs[0];
    else if (fromCommandLine && d.after >= 0) spec = specs[d.after];
    if (spec === undefined) {
      throw new NbdsnapError(
        'BAD_ARGUMENT',
        fromCommandLine
          ? `-D "${d.text}" must follow the image it describes`
          : 'with several images from --config, give their descriptions there ("descriptions": {"NAME": "TEXT"})',
      );
    }
    if (scanned.filter((o) => o !== d).some((o) => o.after === d.after || specs.length === 1)) {
      throw new NbdsnapError('BAD_ARGUMENT', `export "${spec.name}" is given two descriptions`);
    }
    out[spec.name] = d.text;
  }
  return out;
}

/** What a client is told an export is when no description was given: never a server path. */
export function defaultDescription(spec: ImageSpec): string {
  return spec.memorySize !== undefined
    ? `origin ${spec.name} (memory, ${spec.memorySize} bytes)`
    : `origin ${spec.name}`;
}
