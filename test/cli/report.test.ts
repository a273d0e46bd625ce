/**
 * What a failed command prints and its exit status (src/cli/command.ts, main.ts, log.ts), as pure
 * functions: a usage error is the error line, the usage line and exit 2; a runtime error one line
 * and exit 1; a system error reads as "cannot open PATH: ... (EPERM)"; never a stack or a second
 * line from a multi-line message.
 */
import { openSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { helpCommand, report, UsageFailure } from '../../src/cli/command.ts';
import { yargsMessage } from '../../src/cli/main.ts';
import { NbdsnapError } from '../../src/errors.ts';
import { errorText } from '../../src/log.ts';

const systemError = (): unknown => {
  try {
    openSync('/nonexistent/nbdsnap-test', 'r');
  } catch (err) {
    return err;
  }
  throw new Error('opened a file that does not exist');
};

describe('report', () => {
  it('a usage error: two lines, exit 2', () => {
    const r = report(new UsageFailure('Unknown argument: x', 'nbdsnap snapshot create <devices> <name>'));
    expect(r).toEqual({
      status: 2,
      lines: [
        'nbdsnap: error: Unknown argument: x',
        'nbdsnap: usage: nbdsnap snapshot create <devices> <name>; see nbdsnap snapshot create --help',
      ],
    });
  });

  it('a runtime error: one line, exit 1', () => {
    expect(report(new NbdsnapError('NOT_FOUND', 'no snapshot disk@x'))).toEqual({
      status: 1,
      lines: ['nbdsnap: error: no snapshot disk@x'],
    });
    expect(report(systemError())).toEqual({
      status: 1,
      lines: ['nbdsnap: error: cannot open /nonexistent/nbdsnap-test: no such file or directory (ENOENT)'],
    });
  });

  it('a defect: one line saying so, the stack only on request', () => {
    const r = report(new TypeError('x is not a function\n    at somewhere (file.ts:1:1)'));
    expect(r.status).toBe(1);
    expect(r.lines).toHaveLength(process.env.NBDSNAP_DEBUG === '1' ? 2 : 1);
    expect(r.lines[0]).toMatch(/^nbdsnap: error: internal error: x is not a function at somewhere .*NBDSNAP_DEBUG=1/);
  });
});

describe('messages', () => {
  it('yargs choices and multi-line messages in one line', () => {
    expect(yargsMessage('Invalid values:\n  Argument: log-level, Given: "loud", Choices: "error", "warn"')).toBe(
      '--log-level "loud" is not one of error, warn',
    );
    expect(yargsMessage('Invalid values:\n  Argument: p, Given: "x", Choices: "a"')).toBe('-p "x" is not one of a');
    expect(yargsMessage('Invalid JSON config file: true')).toBe('--config needs a FILE');
    expect(yargsMessage('first\n  second')).toBe('first second');
  });

  it('system errors name the call and the path', () => {
    const e = Object.assign(new Error("EROFS: read-only file system, open '/ro/store.img'"), {
      code: 'EROFS',
      syscall: 'open',
      path: '/ro/store.img',
    });
    expect(errorText(e)).toBe('cannot open /ro/store.img: read-only file system (EROFS)');
    expect(errorText('plain')).toBe('plain');
  });

  it('the help command of a usage', () => {
    expect(helpCommand('nbdsnap merge <snapshot>')).toBe('nbdsnap merge --help');
    expect(helpCommand('nbdsnap <command> [options]')).toBe('nbdsnap --help');
    expect(helpCommand('nbdsnap serve [images..]')).toBe('nbdsnap serve --help');
  });
});
