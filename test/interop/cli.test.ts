/**
 * Command-line errors: each must exit non-zero with ONE clear line on stderr, starting with
 * `nbdsnap: error:`, and no stack trace; and the server must not have started serving.
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

  const cases: [string, () => string[], RegExp][] = [
    [
      'a missing image file',
      () => ['serve', `disk=${join(dir.path, 'nope.img')}`, '-p', String(freshPort())],
      /^nbdsnap: error: cannot open .*nope\.img: no such file$/,
    ],
    [
      'a port out of range',
      () => ['serve', `disk=${image}`, '-p', '99999'],
      /^nbdsnap: error: port "99999" is not a TCP port/,
    ],
    [
      'a port that is not a number',
      () => ['serve', `disk=${image}`, '-p', 'http'],
      /^nbdsnap: error: port .* is not a TCP port/,
    ],
    [
      'a port already in use',
      () => ['serve', `disk=${image}`, '-p', String(busy.port)],
      /^nbdsnap: error: cannot listen on 127\.0\.0\.1:\d+: address already in use$/,
    ],
    [
      'an unknown option',
      () => ['serve', `disk=${image}`, '--frobnicate'],
      /^nbdsnap: error: Unknown argument: frobnicate$/,
    ],
    ['an unknown command', () => ['frobnicate'], /^nbdsnap: error: Unknown argument: frobnicate$/],
    ['no command', () => [], /^nbdsnap: error: name a command/],
    [
      'serve without an image',
      () => ['serve', '-p', String(freshPort())],
      /^nbdsnap: error: serve needs at least one IMAGE$/,
    ],
    ['a bad memory size', () => ['serve', 'm=memory:lots'], /^nbdsnap: error: memory size "lots" is not a size/],
    [
      'an export name given twice',
      () => ['serve', `a=${image}`, 'a=memory:1M'],
      /^nbdsnap: error: export name "a" is given twice$/,
    ],
    ['a directory as image', () => ['serve', `d=${dir.path}`], /^nbdsnap: error: cannot open .*: it is a directory$/],
  ];

  for (const [what, args, message] of cases) {
    it(`reports ${what} in one line`, async () => {
      const r = await nbdsnap(args());
      // All of these are usage errors: exit code 2 (main.ts), never a signal or a crash.
      expect(r.code).toBe(2);
      expect(r.lines, r.lines.join('\n')).toHaveLength(1);
      expect(r.lines[0]).toMatch(message);
      expect(r.lines[0]).not.toMatch(/\bat .*\.ts:\d+/);
      // Nothing was served: no "export ... at nbd://" lines.
      expect(r.stdout).toBe('');
    });
  }
});
