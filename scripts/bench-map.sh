#!/bin/bash
# bench-map.sh: block status of a snapshot of a large sparse origin (issue 10, "an index over copies").
# usage: scripts/bench-map.sh [ROOT=.] [PORT=18931] [SIZE=2T]  (NBD_PYTHON: a python3 with the libnbd binding)
# A sparse origin of SIZE, a 256 MiB store, 64 KiB chunks, one snapshot, 2,000 scattered first
# writes; then the time of `nbdinfo --map` of the snapshot in base:allocation and
# qemu:allocation-depth (two runs each), and of the origin's own map.
set -e
ROOT=${1:-.}; PORT=${2:-18931}; SIZE=${3:-2T}; D=$(mktemp -d /tmp/idx-bench.XXXX)
truncate -s $SIZE $D/disk.img; truncate -s 256M $D/store.img
export NBDSNAP_TSX=1 NBDSNAP_CONTROL=$D/ctl
node $ROOT/bin/nbdsnap.cjs serve disk=$D/disk.img --store $D/store.img --control $D/ctl -p $PORT --pid-file $D/pid 2>$D/log &
for i in $(seq 100); do [ -s $D/pid ] && break; sleep 0.2; done
node $ROOT/bin/nbdsnap.cjs snapshot create disk s >/dev/null
"${NBD_PYTHON:-/usr/bin/python3}" -m nbd -u nbd://127.0.0.1:$PORT/disk -c '
import random
random.seed(42)
size = h.get_size()
buf = b"x" * 4096
for i in range(2000):
    h.pwrite(buf, random.randrange(size // 65536) * 65536)
'
echo "copied: $(node $ROOT/bin/nbdsnap.cjs snapshot list --json | head -c 300)"
for ctx in base:allocation qemu:allocation-depth; do
  for run in 1 2; do
    s=$(date +%s.%N); n=$(nbdinfo --map=$ctx nbd://127.0.0.1:$PORT/disk@s | wc -l); e=$(date +%s.%N)
    echo "snapshot $ctx run $run: $(echo "$e - $s" | bc) s, $n extents"
  done
done
s=$(date +%s.%N); n=$(nbdinfo --map nbd://127.0.0.1:$PORT/disk | wc -l); e=$(date +%s.%N)
echo "origin base:allocation: $(echo "$e - $s" | bc) s, $n extents"
nbdinfo --map nbd://127.0.0.1:$PORT/disk@s > $D/map-alloc.txt
nbdinfo --map=qemu:allocation-depth nbd://127.0.0.1:$PORT/disk@s > $D/map-depth.txt
md5sum $D/map-alloc.txt $D/map-depth.txt | sed "s|$D/||"
kill $(cat $D/pid); wait
rm -rf $D
