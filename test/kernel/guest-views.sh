# Guest side of test/kernel/views.test.ts, run by scripts/kernel-vm.sh inside the VM (busybox sh, as
# root). The host prepared everything before the boot (ext4 on the origins, files, snapshots, changes,
# a merge, a backup); this script attaches each view in turn with the kernel NBD client and reports
# what it finds as "key value" lines on fd 3. A section that fails part-way reports what it got and
# the next one still runs.
#
# Environment (from the host): SERVER (10.0.2.2), PORT (one `nbdsnap serve` with exports web,
# web@before (read-only snapshot), web@live (--writable snapshot), app (rolled back by a merge) and
# data@nightly (read-only snapshot, also backed up on the host)).

say() { echo "$*" >&3; }
# step KEY CMD...: run CMD, report "KEY.rc N" and its output as "KEY.out LINE" (first 20 lines).
step() {
  key=$1; shift
  out=$("$@" 2>&1); rc=$?
  say "$key.rc $rc"
  [ -n "$out" ] && printf '%s\n' "$out" | head -20 | while IFS= read -r l; do say "$key.out $l"; done
  return $rc
}
# No -t (request timeout): a server that never answers makes the VM time out, and the report shows
# how far the guest got.
attach() { timeout 60 nbd-client "$SERVER" "$PORT" "$@"; }
devmd5() { dd if="$1" bs=1M iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1; }
files_sha() { # sha256 of every regular file under $1 except lost+found, as "KEY.file SHA PATH"
  (cd "$1" && find . -type f ! -path './lost+found/*' | sort | while read -r f; do
    say "$2.file $(sha256sum "$f" | cut -d' ' -f1) ${f#./}"; done)
}
# the kernel's ext4 messages about DEV since boot (mount, journal recovery)
ext4_log() { dmesg | grep "EXT4-fs ($1)" | while IFS= read -r l; do say "$2.dmesg ${l#*] }"; done; }

# ---- 1. the read-only snapshot of a live ext4: mount -o ro,noload (no journal replay) ------------
snap() {
  step snap.attach attach /dev/nbd0 -N web@before || return
  say "snap.roflag $(cat /sys/block/nbd0/ro)"
  say "snap.size $(blockdev --getsize64 /dev/nbd0)"
  step snap.mount mount -t ext4 -o ro,noload /dev/nbd0 /mnt || return
  say "snap.mountopts $(awk '$1 == "/dev/nbd0" {print $4}' /proc/mounts)"
  files_sha /mnt snap
  step snap.touch touch /mnt/should-fail
  step snap.umount umount /mnt
  say "snap.devmd5 $(devmd5 /dev/nbd0)"
  step snap.detach nbd-client -d /dev/nbd0
}

# ---- 2. the --writable snapshot: mounted read-write, ext4 replays its journal into the snapshot ---
wsnap() {
  step wsnap.attach attach /dev/nbd1 -N web@live || return
  say "wsnap.roflag $(cat /sys/block/nbd1/ro)"
  step wsnap.mount mount -t ext4 /dev/nbd1 /mnt || return
  say "wsnap.mountopts $(awk '$1 == "/dev/nbd1" {print $4}' /proc/mounts)"
  ext4_log nbd1 wsnap
  files_sha /mnt wsnap
  echo "written in the writable snapshot by the guest" >/mnt/guest-note.txt
  say "wsnap.notesha $(sha256sum /mnt/guest-note.txt | cut -d' ' -f1)"
  step wsnap.umount umount /mnt
  step wsnap.detach nbd-client -d /dev/nbd1
}

# ---- 3. the origin after `merge --wait`: the system "reboots" into the rolled-back file system ----
merge() {
  step merge.attach attach /dev/nbd2 -N app || return
  say "merge.roflag $(cat /sys/block/nbd2/ro)"
  step merge.mount mount -t ext4 /dev/nbd2 /mnt || return
  ext4_log nbd2 merge
  files_sha /mnt merge
  step merge.umount umount /mnt
  step merge.detach nbd-client -d /dev/nbd2
}

# ---- 4. a backup tool's view: the whole snapshot read with dd ------------------------------------
bkp() {
  step bkp.attach attach /dev/nbd3 -N data@nightly || return
  say "bkp.size $(blockdev --getsize64 /dev/nbd3)"
  sha=$(dd if=/dev/nbd3 bs=1M iflag=direct 2>/tmp/dd.err | sha256sum | cut -d' ' -f1)
  while IFS= read -r l; do say "bkp.dd $l"; done </tmp/dd.err
  say "bkp.devsha $sha"
  step bkp.detach nbd-client -d /dev/nbd3
}

say "guest $(uname -r) cpus=$(nproc)"
up() { cut -d' ' -f1 /proc/uptime; }
snap; say "@done snap $(up)"
wsnap; say "@done wsnap $(up)"
merge; say "@done merge $(up)"
bkp; say "@done bkp $(up)"
exit 0
