// What the test suite needs from the system, in one table: the Debian packages and, for each,
// the commands that show it is installed. Used by scripts/setup.mjs (`npm run setup`, run first
// by `npm test`) and by the suite's global setup (test/helpers/requirements.ts), which fails the
// run when one is missing unless NBDSNAP_TEST_ALLOW_MISSING=1. Plain JavaScript: it runs on a
// fresh machine before `npm ci`.
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';

export const ALLOW_MISSING = 'NBDSNAP_TEST_ALLOW_MISSING';

export const PACKAGES = [
  { name: 'qemu-utils', tools: ['qemu-img', 'qemu-io', 'qemu-nbd'] },
  { name: 'libnbd-bin', tools: ['nbdinfo', 'nbdcopy', 'nbdfuse'] },
  { name: 'python3-libnbd', tools: ['nbdsh'] },
  { name: 'nbdkit', tools: ['nbdkit'] },
  { name: 'fio', tools: ['fio'] },
  { name: 'fuse3', tools: ['fusermount3'] },
  { name: 'e2fsprogs', tools: ['mkfs.ext4'] },
  { name: 'util-linux', tools: ['losetup'] },
  { name: 'nbd-client', tools: ['nbd-client'] },
  { name: 'qemu-system-x86', tools: ['qemu-system-x86_64'] },
  { name: 'busybox-static', tools: ['busybox'] },
  { name: 'cpio', tools: ['cpio'] },
  // TLS tests make their CA, certificates and PSK files with these.
  { name: 'gnutls-bin', tools: ['certtool', 'psktool'] },
  // node-gyp builds the native helper (src/native/fsx.c) with these at `npm ci`.
  { name: 'python3', tools: ['python3'] },
  { name: 'make', tools: ['make'] },
  { name: 'g++', tools: ['g++'] },
  // The single-node Ceph of the cluster tests and bench (scripts/ceph-cluster.sh): daemons, the
  // ceph/rbd/radosgw-admin commands, and qemu's rbd driver (qemu-nbd serving an RBD image; a
  // path relative to /usr/bin, checked for reading).
  { name: 'ceph-mon', tools: ['ceph-mon'] },
  { name: 'ceph-base', tools: ['monmaptool'] },
  { name: 'ceph-mgr', tools: ['ceph-mgr'] },
  { name: 'ceph-osd', tools: ['ceph-osd'] },
  { name: 'radosgw', tools: ['radosgw'] },
  { name: 'ceph-common', tools: ['ceph', 'rbd', 'radosgw-admin'] },
  {
    name: 'qemu-block-extra',
    tools: [`../lib/${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu/qemu/block-rbd.so`],
  },
  { name: 'curl', tools: ['curl'] },
  { name: 'uuid-runtime', tools: ['uuidgen'] },
];

/**
 * The folders searched for tools: Debian's first (as the tests run them), then $PATH; or only
 * those of NBDSNAP_SETUP_PATH (for the test of this script).
 */
export function searchPath(env = process.env) {
  if (env.NBDSNAP_SETUP_PATH !== undefined) return env.NBDSNAP_SETUP_PATH.split(':');
  return ['/usr/bin', '/usr/sbin', '/bin', '/sbin', ...(env.PATH ?? '').split(':').filter((d) => d !== '')];
}

export function hasTool(tool, dirs = searchPath()) {
  return dirs.some((dir) => {
    try {
      // a library path relative to the bin folder (not normalised: DIR must exist), read only
      if (tool.includes('/')) accessSync(`${dir}/${tool}`, constants.R_OK);
      else accessSync(join(dir, tool), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** The packages of which a tool is missing. */
export function missingPackages(has = (tool) => hasTool(tool)) {
  return PACKAGES.filter((p) => !p.tools.every(has)).map((p) => p.name);
}

/** The one line that installs them. */
export function aptLine(packages) {
  return `apt-get install -y --no-install-recommends ${packages.join(' ')}`;
}

/** The message for a user who cannot (or did not) install them. */
export function missingMessage(packages) {
  return [
    `the tests need these Debian packages, not installed here: ${packages.join(' ')}`,
    `install them as root (or run npm run setup as root):  ${aptLine(packages)}`,
    `or set ${ALLOW_MISSING}=1 to run without them: the tests that need them are then skipped`,
  ];
}
