/**
 * The pid file without a server: written whole through a rename, a symlink at the path replaced
 * (its target untouched), a temporary file left by a crash of the same pid (a symlink here)
 * removed without following it, a directory that cannot hold it refused in one line.
 */
import { lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkPidFile, writePidFile } from '../../src/cli/pid-file.ts';
import { tempDir } from '../helpers/server.ts';

const dir = tempDir('nbdsnap-pidfile-');
afterAll(() => dir.cleanup());

describe('pid file', () => {
  it('replaces a symlink at the path, never its target', () => {
    const victim = join(dir.path, 'victim');
    writeFileSync(victim, 'precious\n');
    const path = join(dir.path, 'a.pid');
    symlinkSync(victim, path);
    checkPidFile(path);
    writePidFile(path, 4242);
    expect(lstatSync(path).isFile()).toBe(true);
    expect(readFileSync(path, 'utf8')).toBe('4242\n');
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(readdirSync(dir.path).sort()).toEqual(['a.pid', 'victim']);
  });

  it('removes a stale temporary file of the same pid without following it', () => {
    const sub = join(dir.path, 'stale');
    mkdirSync(sub);
    const victim = join(sub, 'victim');
    writeFileSync(victim, 'precious\n');
    symlinkSync(victim, join(sub, '.b.pid.77.tmp'));
    writePidFile(join(sub, 'b.pid'), 77);
    expect(readFileSync(join(sub, 'b.pid'), 'utf8')).toBe('77\n');
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(readdirSync(sub).sort()).toEqual(['b.pid', 'victim']);
  });

  it('refuses a directory that does not exist, and a directory at the path', () => {
    expect(() => checkPidFile(join(dir.path, 'none', 'c.pid'))).toThrow(/directory .*none does not exist/);
    const asDir = join(dir.path, 'd.pid');
    mkdirSync(asDir);
    expect(() => checkPidFile(asDir)).toThrow(/it is a directory/);
  });
});
