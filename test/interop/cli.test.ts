/**
 * Command-line errors: each must exit with ONE clear line on stderr, starting with
 * `nbdsnap: error:`, and no stack trace (a usage error, exit status 2, adds one usage line; a
 * runtime error exits 1); and the server must not have started serving.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, sparseImage, stopQuietly } from '../helpers/clients.ts';
import { CLI, freshPort, type RunningServer, startServer, tempDir } from '../helpers/server.ts';

describe('nbdsnap command-line errors', () => {
  const dir = tempDir();
  const image = join(dir.path, 'disk.img');
  let busy: RunningServer;

  beforeAll(async () => {
    sparseImage(image, 1024 * 1024);
    // Its own device: a second server on the same image is refused by the image's lock first.
    busy = await startServer(['busy=memory:1M']);
  });

  afterAll(async () => {
    await stopQuietly(busy);
    dir.cleanup();
  });

  /** Run `nbdsnap ARGS` to completion: exit code, stderr lines, stdout. */
  async function nbdsnap(args: string[]) {
    const r = await run(process.execPath, [CLI, ...args], { timeoutMs: 30_000 });
    return { code: r.code, lines: r.stderr.split('\n').filter((l) => l !== ''), stdout: r.stdout };
  }

  const USAGE = 2;
  const RUNTIME = 1;
  const cases: [string, () => string[], RegExp, number][] = [
    [
      'a missing image file',
      () => ['serve', `disk=${join(dir.path, 'nope.img')}`, '-p', String(freshPort())],
      /^nbdsnap: error: cannot open .*nope\.img: no such file$/,
      RUNTIME,
    ],
    [
      'a port out of range',
      () => ['serve', `disk=${image}`, '-p', '99999'],
      /^nbdsnap: error: port "99999" is not a TCP port/,
      USAGE,
    ],
    [
      'a port that is not a number',
      () => ['serve', `disk=${image}`, '-p', 'http'],
      /^nbdsnap: error: port .* is not a TCP port/,
      USAGE,
    ],
    [
      'a port already in use',
      () => ['serve', `disk=${image}`, '-p', String(busy.port)],
      /^nbdsnap: error: cannot listen on 127\.0\.0\.1:\d+: address already in use$/,
      RUNTIME,
    ],
    [
      'an unknown option',
      () => ['serve', `disk=${image}`, '--frobnicate'],
      /^nbdsnap: error: Unknown argument: frobnicate$/,
      USAGE,
    ],
    ['an unknown command', () => ['frobnicate'], /^nbdsnap: error: Unknown argument: frobnicate$/, USAGE],
    ['no command', () => [], /^nbdsnap: error: name a command$/, USAGE],
    [
      'serve without an image',
      () => ['serve', '-p', String(freshPort())],
      /^nbdsnap: error: serve needs at least one IMAGE$/,
      USAGE,
    ],
    ['a bad memory size', () => ['serve', 'm=memory:lots'], /^nbdsnap: error: memory size "lots" is not a size/, USAGE],
    [
      'an export name given twice',
      () => ['serve', `a=${image}`, 'a=memory:1M'],
      /^nbdsnap: error: export name "a" is given twice$/,
      USAGE,
    ],
    [
      'a directory as image',
      () => ['serve', `d=${dir.path}`, '-p', String(freshPort())],
      /^nbdsnap: error: cannot open .*: it is a directory$/,
      RUNTIME,
    ],
  ];

  for (const [what, args, message, status] of cases) {
    it(`reports ${what} in one line, exit status ${status}`, async () => {
      const r = await nbdsnap(args());
      expect(r.code, r.lines.join('\n')).toBe(status);
      // The error line; a usage error adds the usage of the command, nothing else (no stack).
      expect(r.lines, r.lines.join('\n')).toHaveLength(status === USAGE ? 2 : 1);
      expect(r.lines[0]).toMatch(message);
      if (status === USAGE)
        expect(r.lines[1]).toMatch(/^nbdsnap: usage: nbdsnap (serve|<command>).*; see nbdsnap .*--help$/);
      for (const l of r.lines) expect(l).not.toMatch(/^\s+at |\bat .*\.[tj]s:\d+/);
      // Nothing was served: no "export ... at nbd://" lines.
      expect(r.stdout).toBe('');
    });
  }
});
