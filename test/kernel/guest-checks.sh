# Guest side of test/kernel/kernel-client.test.ts, run by scripts/kernel-vm.sh inside the VM (busybox
# sh, as root). One boot runs every section in turn; each reports "key value" lines on fd 3, which the
# host test reads and checks against what it sees in the served image files. A section that fails
# part-way reports what it got and the next one still runs.
#
# Environment (from the host): SERVER (10.0.2.2), PORT_RW (a read-write `nbdsnap serve` of exports
# disk, multi, blk and other), PORT_RO (a read-only one, `-r`, of export fs).

say() { echo "$*" >&3; }
# step KEY CMD...: run CMD, report "KEY.rc N" and its output as "KEY.out LINE" (first 20 lines).
step() {
  key=$1; shift
  out=$("$@" 2>&1); rc=$?
  say "$key.rc $rc"
  [ -n "$out" ] && printf '%s\n' "$out" | head -20 | while IFS= read -r l; do say "$key.out $l"; done
  return $rc
}
# md5 of a whole device read with O_DIRECT (every byte comes from the server, not the page cache);
# md5 because it is over twice as fast as sha256 in an emulated CPU, and this is no security check
devmd5() { dd if="$1" bs=1M iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1; }
# Single connections get no -t (request timeout): the kernel then only warns about a slow request, so
# a server that never answers makes the VM time out, and the report shows how far the guest got.
attach() { timeout 60 nbd-client "$SERVER" "$@"; }
conns() { netstat -tn 2>/dev/null | grep -c "$SERVER:$1 .*ESTABLISHED"; }
files_sha() { # sha256 of every regular file under $1 except lost+found, as "KEY.file SHA PATH"
  (cd "$1" && find . -type f ! -path './lost+found/*' | sort | while read -r f; do
    say "$2.file $(sha256sum "$f" | cut -d' ' -f1) ${f#./}"; done)
}

# ---- 1. read-write: mkfs.ext4 on the device, write files, sync, detach ---------------------------
rw() {
  step rw.attach attach "$PORT_RW" /dev/nbd0 -N disk || return
  say "rw.lbs $(cat /sys/block/nbd0/queue/logical_block_size)"
  say "rw.size $(blockdev --getsize64 /dev/nbd0)"
  step rw.mkfs mkfs.ext4 -F -q -L nbdsnap-kt -U 6b1f2c3d-0000-4e5f-8a9b-0c1d2e3f4a5b /dev/nbd0 || return
  step rw.mount mount -t ext4 /dev/nbd0 /mnt || return
  say "rw.fstype $(awk '$1 == "/dev/nbd0" {print $3}' /proc/mounts)"
  echo "written by the kernel NBD client" >/mnt/hello.txt
  mkdir -p /mnt/dir/sub
  seq 1 20000 >/mnt/dir/seq.txt
  dd if=/dev/urandom of=/mnt/dir/random.bin bs=1M count=6 2>/dev/null
  dd if=/dev/urandom of=/mnt/dir/sub/small.bin bs=1000 count=3 2>/dev/null
  : >/mnt/dir/empty
  step rw.sync sync
  files_sha /mnt rw
  step rw.umount umount /mnt || return
  say "rw.devmd5 $(devmd5 /dev/nbd0)"
  step rw.detach nbd-client -d /dev/nbd0
  sleep 1
  say "rw.size-after-detach $(cat /sys/block/nbd0/size)"
}

# ---- 2. read-only export: mount -o ro, and a write onto the device fails -------------------------
ro() {
  step ro.attach attach "$PORT_RO" /dev/nbd1 -N fs || return
  say "ro.roflag $(cat /sys/block/nbd1/ro)"
  step ro.mount mount -t ext4 -o ro /dev/nbd1 /mnt || return
  say "ro.mountopts $(awk '$1 == "/dev/nbd1" {print $4}' /proc/mounts)"
  files_sha /mnt ro
  step ro.touch touch /mnt/new-file
  step ro.umount umount /mnt
  step ro.dd dd if=/dev/urandom of=/dev/nbd1 bs=4096 count=4 oflag=direct conv=fsync
  step ro.dd-buffered sh -c 'dd if=/dev/urandom of=/dev/nbd1 bs=4096 count=4 seek=100 && sync'
  say "ro.devmd5 $(devmd5 /dev/nbd1)"
  step ro.detach nbd-client -d /dev/nbd1
}

# ---- 3. four connections (-C 4, needs CAN_MULTI_CONN): whole-device dd, parallel writes ---------
mc() {
  # -t: with several connections the kernel drops one whose request is not answered within the
  # timeout (30 s by default); an emulated guest on a busy host can be that slow without any fault
  step mc.attach attach "$PORT_RW" /dev/nbd2 -N multi -C 4 -t 150 || return
  say "mc.conns $(conns "$PORT_RW")"
  say "mc.cpus $(nproc)"
  say "mc.hwqueues $(ls /sys/block/nbd2/mq | wc -l)"
  # four writers at once, so several requests are in flight together. (The kernel sends a request
  # over the connection of the CPU's hardware queue, one queue per CPU up to -C; with the VM's one
  # CPU the I/O goes over the first connection while all four stay open: see scripts/kernel-vm.sh
  # for why one CPU.)
  dd if=/dev/urandom of=/tmp/mc.bin bs=1M count=4 2>/dev/null
  say "mc.chunksha $(sha256sum /tmp/mc.bin | cut -d' ' -f1)"
  for i in 0 1 2 3; do
    dd if=/tmp/mc.bin of=/dev/nbd2 bs=64k seek=$((128 + i * 64)) oflag=direct 2>/dev/null &
  done
  wait
  step mc.flush blockdev --flushbufs /dev/nbd2
  # the whole device (16 MiB as the host wrote it, 16 MiB as written above) read back
  say "mc.devmd5 $(devmd5 /dev/nbd2)"
  # left attached: the power-off section below uses it
}

# ---- 4. block sizes: -b 4096, then the default 512 on the same export ----------------------------
bs() {
  dd if=/dev/urandom of=/tmp/a.bin bs=4096 count=3 2>/dev/null
  dd if=/dev/urandom of=/tmp/b.bin bs=512 count=3 2>/dev/null
  say "bs.asha $(sha256sum /tmp/a.bin | cut -d' ' -f1)"
  say "bs.bsha $(sha256sum /tmp/b.bin | cut -d' ' -f1)"
  if step bs4k.attach attach "$PORT_RW" /dev/nbd3 -N blk -b 4096; then
    say "bs4k.lbs $(cat /sys/block/nbd3/queue/logical_block_size)"
    step bs4k.write dd if=/tmp/a.bin of=/dev/nbd3 bs=4096 seek=5 oflag=direct
    say "bs4k.readback $(dd if=/dev/nbd3 bs=4096 skip=5 count=3 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
    say "bs4k.devmd5 $(devmd5 /dev/nbd3)"
    step bs4k.detach nbd-client -d /dev/nbd3
  fi
  if step bs512.attach attach "$PORT_RW" /dev/nbd4 -N blk; then
    say "bs512.lbs $(cat /sys/block/nbd4/queue/logical_block_size)"
    step bs512.write dd if=/tmp/b.bin of=/dev/nbd4 bs=512 seek=3 oflag=direct
    say "bs512.readback $(dd if=/dev/nbd4 bs=512 skip=3 count=3 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
    say "bs512.readback-a $(dd if=/dev/nbd4 bs=4096 skip=5 count=3 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
    say "bs512.devmd5 $(devmd5 /dev/nbd4)"
    step bs512.detach nbd-client -d /dev/nbd4
  fi
}

# ---- 5. power off without detaching: nbd2 (4 connections) stays attached with reads in flight when
# this script ends, and kernel-vm.sh switches the VM off at once (no unmount, no nbd-client -d) ------
off() {
  [ -e /sys/block/nbd2/pid ] || { say "off.attached no"; return; }
  say "off.attached yes"
  for c in 1 2; do
    sh -c 'while :; do dd if=/dev/nbd2 of=/dev/null bs=64k iflag=direct 2>/dev/null; done' &
  done
  sleep 2
  say "off.conns $(conns "$PORT_RW")"
  say "off.poweroff now"
}

say "guest $(uname -r) cpus=$(nproc)"
up() { cut -d' ' -f1 /proc/uptime; }
rw; say "@done rw $(up)"
ro; say "@done ro $(up)"
mc; say "@done mc $(up)"
bs; say "@done bs $(up)"
off; say "@done off $(up)"
exit 0
