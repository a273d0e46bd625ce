/**
 * The kernel's NBD client over TLS: Debian's nbd-client 3.24 is built with GnuTLS (`-certfile
 * -keyfile -cacertfile -tlshostname`; it relays the kernel's socket through its own TLS session).
 * In the test VM (scripts/kernel-vm.sh) it attaches an export of `nbdsnap serve --tls=require
 * --tls-verify-peer` as /dev/nbd0 with a client certificate, reads and writes through it, and is
 * refused without a certificate and without TLS. The credentials reach the guest as environment
 * values (the VM has no shared folder).
 *
 * Skipped with the reason where no VM can start, except under CI=true. One VM boot, ~30 s.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, MiB, pattern, sha256, stopQuietly } from '../helpers/clients.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';
import { makeTlsFixture } from '../helpers/tls.ts';
import { prepareKernelVm, runKernelVm, type VmRun } from './vm.ts';

const CI = ['1', 'true', 'yes'].includes((process.env.CI ?? '').toLowerCase());
const availability = hasTool('certtool') ? await prepareKernelVm() : { ok: false as const, reason: 'no certtool' };
if (!availability.ok && !CI) console.warn(`kernel TLS test skipped: ${availability.reason}`);

const SIZE = 4 * MiB;
const CONTENT = pattern(SIZE, 11);

/** The guest: write the credentials to files, then three attaches. Reports on fd 3. */
const GUEST = `
printf '%s\\n' "$CA_PEM" >/tmp/ca.pem
printf '%s\\n' "$CERT_PEM" >/tmp/cert.pem
printf '%s\\n' "$KEY_PEM" >/tmp/key.pem
attach() { timeout 60 nbd-client 10.0.2.2 "$PORT" /dev/nbd0 -N disk "$@" >/tmp/out 2>&1; echo $?; }
echo "plain.rc $(attach)" >&3
echo "nocert.rc $(attach -cacertfile /tmp/ca.pem -tlshostname localhost)" >&3
rc=$(attach -cacertfile /tmp/ca.pem -certfile /tmp/cert.pem -keyfile /tmp/key.pem -tlshostname localhost)
echo "tls.rc $rc" >&3
if [ "$rc" = 0 ]; then
  echo "tls.size $(blockdev --getsize64 /dev/nbd0)" >&3
  echo "tls.read $(dd if=/dev/nbd0 bs=1M count=4 2>/dev/null | sha256sum | cut -d' ' -f1)" >&3
  dd if=/dev/nbd0 of=/tmp/first bs=1M count=1 2>/dev/null
  dd if=/dev/nbd0 of=/dev/nbd0 bs=1M skip=1 seek=3 count=1 conv=fsync 2>/dev/null
  echo "tls.write $?" >&3
  nbd-client -d /dev/nbd0 >/dev/null 2>&1
  echo "tls.detach $?" >&3
fi
tr '\\n' ' ' </tmp/out | sed 's/^/tls.out /' >&3; echo >&3
`;

describe.skipIf(!availability.ok && !CI)('the kernel client (nbd-client) over TLS', () => {
  const dir = tempDir('nbdsnap-ktls-');
  const image = join(dir.path, 'disk.img');
  let srv: RunningServer;
  let vm: VmRun;

  beforeAll(async () => {
    if (!availability.ok) throw new Error(`no VM under CI: ${availability.reason}`);
    const fx = makeTlsFixture(join(dir.path, 'creds'));
    writeFileSync(image, CONTENT);
    srv = await startServer([
      `disk=${image}`,
      '--tls=require',
      `--tls-certificates=${fx.serverDir}`,
      '--tls-verify-peer',
    ]);
    const script = join(dir.path, 'guest.sh');
    writeFileSync(script, GUEST);
    const pem = (f: string) => readFileSync(join(fx.clientDir, f), 'utf8').trim();
    vm = await runKernelVm(script, {
      env: {
        PORT: srv.port,
        CA_PEM: pem('ca-cert.pem'),
        CERT_PEM: pem('client-cert.pem'),
        KEY_PEM: pem('client-key.pem'),
      },
      timeoutS: 240,
    });
  }, 400_000);

  afterAll(async () => {
    await stopQuietly(srv);
    dir.cleanup();
  });

  const facts = () => `${vm.report.lines.join('\n')}\n--- server:\n${srv.stderr().slice(-3000)}`;

  it('attaches with a client certificate, reads the image and writes through it', () => {
    expect(vm.report.get('tls.rc'), facts()).toBe('0');
    expect(vm.report.get('tls.size')).toBe(String(SIZE));
    expect(vm.report.get('tls.read')).toBe(sha256(CONTENT));
    expect(vm.report.get('tls.write')).toBe('0');
    expect(vm.report.get('tls.detach')).toBe('0');
    // The guest copied its second MiB over the fourth: the image on the host shows it.
    const now = readFileSync(image);
    expect(sha256(now.subarray(3 * MiB, 4 * MiB))).toBe(sha256(CONTENT.subarray(MiB, 2 * MiB)));
    expect(sha256(now.subarray(0, 3 * MiB))).toBe(sha256(CONTENT.subarray(0, 3 * MiB)));
  });

  it('is refused without a certificate and without TLS, and the server goes on', () => {
    expect(vm.report.get('plain.rc'), facts()).not.toBe('0');
    expect(vm.report.get('nocert.rc'), facts()).not.toBe('0');
    expect(srv.stderr()).toMatch(/"err":"peer did not return a certificate","msg":"TLS handshake failed"/);
    expect(srv.child.exitCode).toBeNull();
  });
});
