#!/usr/bin/env bash
# kernel-vm.sh: boot a small throwaway Linux VM (qemu) whose kernel has the real nbd driver, run a
# guest shell script in it as root, and hand back what the script reported. nbdsnap's kernel-client
# tests (test/kernel/) use it to attach `nbdsnap serve` exports as /dev/nbdX exactly as users do.
#
#   scripts/kernel-vm.sh [options] SCRIPT     boot, run SCRIPT (busybox sh) in the guest, switch off
#   scripts/kernel-vm.sh --prepare            only fetch the kernel and build the initramfs (cached)
#
# Options:
#   --cache DIR      kernel + initramfs cache, reused across runs
#                    (default $NBDSNAP_KERNEL_VM_CACHE or ${TMPDIR:-/tmp}/nbdsnap-kernel-vm)
#   --env K=V        set K in the guest script's environment (repeatable)
#   --results FILE   write the guest's report lines here (default: stdout)
#   --console FILE   keep the guest console (kernel log, script stderr) here (default: in a temp dir)
#   --timeout S      kill the VM after S seconds (default 150)
#   --mem MB, --smp N  guest memory (default 512) and CPUs (default 1; see "boot" below)
#
# Inside the guest:
#   - the host's 127.0.0.1 is 10.0.2.2 (qemu user networking), so
#       nbd-client 10.0.2.2 PORT /dev/nbd0 -N EXPORT [-C 4] [-b 4096]   attaches an export;
#   - file descriptor 3 is the report channel (the VM's second serial port, which carries nothing
#     else, so kernel messages never interleave with it): `echo "key value" >&3`;
#   - tools: busybox (sh, dd, sha256sum, md5sum, mount, netstat, blockdev, timeout, ...), nbd-client,
#     e2fsprogs' mke2fs as mkfs.ext4/mke2fs, and the kernel's ext4 and nbd drivers (nbds_max=16).
#   - when SCRIPT ends the VM is switched off at once, as if its power were cut: no unmount, no
#     detach, whatever is still attached stays attached and its connections go away with qemu. (The
#     guest resets itself with sysrq-b and qemu's -no-reboot turns the reset into an exit. An
#     orderly `poweroff -f` goes through the kernel's device shutdown, where this kernel's virtio-net
#     can spin forever while nbd I/O is in flight.) Should that not end qemu, the VM is killed 15 s
#     after the script's end and the report gets a line "@forced-off".
#
# Environment: NBDSNAP_KERNEL_VM_CACHE (cache folder), NBDSNAP_VM_QEMU (the qemu binary),
# NBDSNAP_VM_KVM=1 (use KVM), NBDSNAP_VM_ACCEL (qemu accelerator arguments, e.g. "-accel tcg").
#
# Exit status: the guest script's, 124 if the VM did not finish (timeout, kernel panic), 77 if the
# VM cannot be started here at all (no qemu, no kernel package reachable); a message says why.
#
# Debian packages used on the host: qemu-system-x86 busybox-static cpio nbd-client e2fsprogs
# (and apt/dpkg to fetch linux-image-*-cloud-amd64, unpacked into the cache, never installed).
# The CPU is emulated (TCG, 5-10 s to boot on 2 cores); NBDSNAP_VM_KVM=1 uses KVM instead.
set -euo pipefail

RECIPE=6 # bump when the initramfs layout or the init below changes, to rebuild caches
CACHE=${NBDSNAP_KERNEL_VM_CACHE:-${TMPDIR:-/tmp}/nbdsnap-kernel-vm}
TIMEOUT=150 MEM=512 SMP=1 RESULTS='' CONSOLE='' PREPARE_ONLY=0 SCRIPT=''
ENVS=()
EX_UNAVAILABLE=77

die() { echo "kernel-vm.sh: $*" >&2; exit 2; }
unavailable() { echo "kernel-vm.sh: cannot start the VM: $*" >&2; exit $EX_UNAVAILABLE; }

while [ $# -gt 0 ]; do
  case $1 in
    --cache) CACHE=$2; shift 2 ;;
    --env) [[ $2 == *=* ]] || die "--env wants K=V, got '$2'"; ENVS+=("$2"); shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --console) CONSOLE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --smp) SMP=$2; shift 2 ;;
    --prepare) PREPARE_ONLY=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$SCRIPT" ] || die "one SCRIPT only"; SCRIPT=$1; shift ;;
  esac
done
[ "$PREPARE_ONLY" = 1 ] || [ -n "$SCRIPT" ] || die "usage: kernel-vm.sh [options] SCRIPT | --prepare (see --help)"
[ -z "$SCRIPT" ] || [ -r "$SCRIPT" ] || die "cannot read $SCRIPT"

# ---- what the host must have -------------------------------------------------------------------
QEMU=${NBDSNAP_VM_QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null 2>&1 || unavailable "'$QEMU' not found (Debian package qemu-system-x86)"
for t in cpio gzip flock; do
  command -v "$t" >/dev/null 2>&1 || unavailable "'$t' not found (Debian packages: cpio gzip util-linux)"
done
BUSYBOX=$(command -v busybox || true); [ -x /bin/busybox ] && BUSYBOX=/bin/busybox
[ -n "$BUSYBOX" ] || unavailable "busybox not found (Debian package busybox-static)"
NBD_CLIENT=$(command -v nbd-client || true); [ -x /usr/sbin/nbd-client ] && NBD_CLIENT=/usr/sbin/nbd-client
[ -n "$NBD_CLIENT" ] || unavailable "nbd-client not found (Debian package nbd-client)"
MKE2FS=$(command -v mke2fs || true); [ -x /usr/sbin/mke2fs ] && MKE2FS=/usr/sbin/mke2fs; [ -x /sbin/mke2fs ] && MKE2FS=/sbin/mke2fs
[ -n "$MKE2FS" ] || unavailable "mke2fs not found (Debian package e2fsprogs)"

mkdir -p "$CACHE" || unavailable "cannot create the cache folder $CACHE"

# ---- 1. kernel + base initramfs, built once and cached (under a lock: test files run in parallel) --
prepare() {
  # a kernel with nbd.ko: Debian's cloud kernel (small, virtio drivers as modules, ext4 built in),
  # unpacked (not installed) from its package.
  if ! ls "$CACHE"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || unavailable "no kernel cached in $CACHE/kernel and no apt-get/dpkg-deb to fetch one"
    local pkg dl
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}' || true)
    if [ -z "$pkg" ]; then
      apt-get update -qq >/dev/null 2>&1 || true
      pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}' || true)
    fi
    [ -n "$pkg" ] || unavailable "apt knows no linux-image-cloud-amd64 package"
    dl=$(mktemp -d "$CACHE/dl.XXXXXX")
    (cd "$dl" && apt-get download "$pkg" >download.log 2>&1) || { cat "$dl/download.log" >&2; rm -rf "$dl"; unavailable "apt-get download $pkg failed"; }
    dpkg-deb -x "$dl"/"$pkg"_*.deb "$dl/kernel" || { rm -rf "$dl"; die "dpkg-deb -x failed"; }
    rm -rf "$CACHE/kernel"; mv "$dl/kernel" "$CACHE/kernel"; rm -rf "$dl"
    rm -f "$CACHE/base.cpio.gz" "$CACHE/stamp"
  fi
  local kver vmlinuz moddir
  vmlinuz=$(ls "$CACHE"/kernel/boot/vmlinuz-* | head -1)
  kver=${vmlinuz##*/vmlinuz-}
  moddir=$CACHE/kernel/lib/modules/$kver

  local stamp
  stamp="recipe=$RECIPE kernel=$kver $(sha256sum "$BUSYBOX" "$NBD_CLIENT" "$MKE2FS" | awk '{print $1}' | tr '\n' ' ')"
  if [ -f "$CACHE/base.cpio.gz" ] && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$stamp" ]; then return; fi

  local R
  R=$(mktemp -d "$CACHE/root.XXXXXX")
  mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,mnt,tmp,run,lib/modules}
  cp "$BUSYBOX" "$R/bin/busybox"
  for a in $("$BUSYBOX" --list); do
    case $a in busybox|mke2fs|mkfs.ext2) continue ;; esac # the real mke2fs is below
    ln -s busybox "$R/bin/$a"
  done
  add_binary() { # copy a binary and the shared libraries it loads
    cp "$1" "$R/sbin/"
    local l
    for l in $(ldd "$1" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*' || true); do
      mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"
    done
  }
  add_binary "$NBD_CLIENT"
  add_binary "$MKE2FS"
  for n in mkfs.ext4 mkfs.ext3 mkfs.ext2; do ln -s mke2fs "$R/sbin/$n"; done
  [ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$R/etc/"
  # a library directory the loader searches even on non-Debian hosts
  echo '/lib/x86_64-linux-gnu' >"$R/etc/ld.so.conf"

  # modules and their dependencies, in load order (read from each module's .modinfo "depends=")
  local order=() seen=" "
  modpath() { find "$moddir/kernel" -name "$1.ko*" | head -1; }
  addmod() {
    local name=${1//-/_} f dep
    case $seen in *" $name "*) return ;; esac
    seen="$seen$name "
    f=$(modpath "$name"); [ -n "$f" ] || f=$(modpath "${1//_/-}")
    if [ -z "$f" ]; then # built into this kernel?
      grep -q "/$name.ko" "$moddir/modules.builtin" 2>/dev/null && return
      die "kernel module $name not found in $moddir"
    fi
    for dep in $(tr '\0' '\n' <"$f" | sed -n 's/^depends=//p' | tr ',' ' '); do addmod "$dep"; done
    cp "$f" "$R/lib/modules/"
    order+=("$(basename "$f")")
  }
  for m in virtio_pci virtio_net nbd; do addmod "$m"; done
  printf '%s\n' "${order[@]}" >"$R/etc/modules"

  cat >"$R/init" <<'INIT'
#!/bin/sh
export PATH=/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read -r m; do
  case $m in nbd.ko*) insmod /lib/modules/$m nbds_max=16 ;; *) insmod /lib/modules/$m ;; esac
done </etc/modules
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3>/dev/ttyS1
echo "@boot $(cut -d' ' -f1 /proc/uptime)" >&3
set -a; [ -f /run.env ] && . /run.env; set +a
sh /test.sh </dev/null
echo "@status $?" >&3
echo b >/proc/sysrq-trigger
poweroff -f
INIT
  chmod +x "$R/init"
  (cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 >"$CACHE/base.cpio.gz.tmp")
  mv "$CACHE/base.cpio.gz.tmp" "$CACHE/base.cpio.gz"
  echo "$stamp" >"$CACHE/stamp"
  rm -rf "$R"
}

exec 9>"$CACHE/.lock"
flock 9
prepare
flock -u 9
exec 9>&-
[ "$PREPARE_ONLY" = 1 ] && { echo "kernel-vm.sh: ready in $CACHE"; exit 0; }

# ---- 2. per run: the script and its environment as a second archive appended to the cached one ----
VMLINUZ=$(ls "$CACHE"/kernel/boot/vmlinuz-* | head -1)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nbdsnap-vm-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/add"
cp "$SCRIPT" "$WORK/add/test.sh"
: >"$WORK/add/run.env"
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
  k=${kv%%=*} v=${kv#*=}
  [[ $k =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad --env name '$k'"
  printf "%s='%s'\n" "$k" "${v//\'/\'\\\'\'}" >>"$WORK/add/run.env"
done
(cd "$WORK/add" && printf '%s\n' test.sh run.env | cpio -o -H newc --quiet | gzip -1 >"$WORK/run.cpio.gz")
cat "$CACHE/base.cpio.gz" "$WORK/run.cpio.gz" >"$WORK/initrd.gz"

# ---- 3. boot ----------------------------------------------------------------------------------------
# TCG (software emulation): on this project's machines /dev/kvm exists but a KVM guest hangs in early
# boot, so KVM is opt-in (NBDSNAP_VM_KVM=1) where it is known to work. One vCPU by default: with
# several, TCG guests on a loaded 2-core host sometimes lost a wakeup (an nbd reply sat unread in a
# socket until the request timed out) or stalled at boot (RCU stall warnings).
ACCEL=(-accel tcg)
if [ "${NBDSNAP_VM_KVM:-}" = 1 ]; then ACCEL=(-accel kvm -cpu host); fi
if [ -n "${NBDSNAP_VM_ACCEL:-}" ]; then read -r -a ACCEL <<<"$NBDSNAP_VM_ACCEL"; fi # e.g. "-accel tcg,thread=single"
[ -n "$CONSOLE" ] || CONSOLE=$WORK/console.log
OUT=$WORK/results.raw
: >"$OUT"
"$QEMU" "${ACCEL[@]}" -m "$MEM" -smp "$SMP" \
  -nodefaults -no-user-config -display none -no-reboot \
  -kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 8250.nr_uarts=2" \
  -serial "file:$CONSOLE" -serial "file:$OUT" \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0 </dev/null >"$WORK/qemu.log" 2>&1 &
QPID=$!
trap 'kill -9 $QPID 2>/dev/null || true; rm -rf "$WORK"' EXIT
deadline=$((SECONDS + TIMEOUT)) ended_at='' how=''
while kill -0 $QPID 2>/dev/null; do
  if [ -z "$ended_at" ] && grep -q '^@status' "$OUT"; then ended_at=$SECONDS; fi
  if [ -n "$ended_at" ] && [ $((SECONDS - ended_at)) -ge 15 ]; then how=forced-off; break; fi
  if [ $SECONDS -ge $deadline ]; then how=timeout; break; fi
  sleep 0.2
done
if [ -n "$how" ]; then kill -9 $QPID 2>/dev/null; fi
wait $QPID 2>/dev/null || true
[ "$how" = forced-off ] && { echo "@forced-off" >>"$OUT"; echo "kernel-vm.sh: the guest did not power off within 15 s of its script's end: killed" >&2; }
tr -d '\r' <"$OUT" | { if [ -n "$RESULTS" ]; then cat >"$RESULTS"; else cat; fi; }
status=$(tr -d '\r' <"$OUT" | sed -n 's/^@status \([0-9]*\)$/\1/p' | tail -1)
if [ -z "$status" ]; then
  cat "$WORK/qemu.log" >&2
  if [ "$how" = timeout ]; then echo "kernel-vm.sh: the VM did not finish in ${TIMEOUT}s: killed; last console lines:" >&2
  else echo "kernel-vm.sh: the VM stopped before the guest script ended; last console lines:" >&2; fi
  tr -d '\r' <"$CONSOLE" | tail -20 >&2
  exit 124
fi
exit "$status"
