#!/usr/bin/env bash
# bench-snapread.sh: the two "snapshot read of copied chunks" rows of the snapshot section, alone,
# with CPU seconds per GiB: one nbdsnap, a random-content image, one snapshot, every chunk copied
# by 4 KiB first writes in random chunk order (as the snapshot section's w4k replay), then origin
# and snapshot reads alternating (4 KiB random QD32, 1 MiB sequential QD16), ROUNDS times.
#
#   scripts/bench-snapread.sh [SIZE=1G] [ROUNDS=2] [RUNTIME=3]
#   SNAPREAD_NODE_FLAGS="--cpu-prof --cpu-prof-dir=DIR"   profile the server (written at exit)
#   SNAPREAD_ARGS="..."                                   extra `nbdsnap serve` options
#   SNAPREAD_PHASES="snap-4k ..."                         only these of origin-4k snap-4k origin-1m snap-1m
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE=${1:-1G} ROUNDS=${2:-2} RUNTIME=${3:-3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/snapread.XXXXXX")
IMG=$WORK/image.raw STORE=$WORK/store.img CTL=$WORK/ctl
PIDF=$WORK/pid
cleanup() { [ -s "$PIDF" ] && kill -TERM "$(cat "$PIDF")" 2>/dev/null && while kill -0 "$(cat "$PIDF")" 2>/dev/null; do sleep 0.1; done
  [ -n "${SNAPREAD_LOG:-}" ] && cp "$WORK/log" "$SNAPREAD_LOG"
  rm -rf "$WORK"
}
trap cleanup EXIT
truncate -s "$SIZE" "$IMG"
BYTES=$(stat -c %s "$IMG")
head -c "$BYTES" /dev/urandom | dd of="$IMG" bs=1M conv=notrunc iflag=fullblock status=none
truncate -s $((BYTES + BYTES / 4 + 64 * 1048576)) "$STORE"
PORT=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
serve() {  # node-flags...: nbdsnap on the image and store (the store kept across restarts)
  rm -f "$PIDF"
  # shellcheck disable=SC2086
  node "$@" "$ROOT/bin/nbdsnap.cjs" serve "bench=$IMG" --store "$STORE" --control "$CTL" \
    -p "$PORT" -b 127.0.0.1 --pid-file "$PIDF" --log-level warn ${SNAPREAD_ARGS:-} >>"$WORK/log" 2>&1 &
  for _ in $(seq 1 300); do [ -s "$PIDF" ] && break; sleep 0.1; done
  PID=$(cat "$PIDF")
}
stop() { kill -TERM "$PID"; while kill -0 "$PID" 2>/dev/null; do sleep 0.1; done; }
# shellcheck disable=SC2086
serve ${SNAPREAD_FIRST_FLAGS:-}
U=nbd://127.0.0.1:$PORT/bench
node "$ROOT/bin/nbdsnap.cjs" snapshot create bench s1 --control "$CTL" >/dev/null
node -e '
  const [bytes, chunk, path] = [Number(process.argv[1]), 65536, process.argv[2]];
  const n = Math.floor(bytes / chunk), order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) { const j = Math.floor(Math.random() * (i + 1)); [order[i], order[j]] = [order[j], order[i]]; }
  const out = ["fio version 2 iolog", "w.0.0 add", "w.0.0 open"];
  for (const c of order) out.push(`w.0.0 write ${c * chunk + 4096 * Math.floor(Math.random() * 16)} 4096`);
  for (let i = 0; i < 64; i++) out.push("w.0.0 read 0 4096");
  require("fs").writeFileSync(path, out.join("\n") + "\n");' "$BYTES" "$WORK/w.iolog"
fio --name=w --ioengine=nbd --uri="$U" --read_iolog="$WORK/w.iolog" --replay_no_stall=1 --iodepth=32 \
  --number_ios=$((BYTES / 65536)) --output-format=terse >/dev/null 2>&1
sync
# restarted (only with SNAPREAD_NODE_FLAGS), so that a profile covers the reads only; the bench's
# snapshot section reads right after the copies, in the same process
if [ -n "${SNAPREAD_NODE_FLAGS:-}" ]; then
  stop
  # shellcheck disable=SC2086
  serve $SNAPREAD_NODE_FLAGS
fi
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f\n", ($12 + $13) / hz }' "/proc/$PID/stat"; }
PHASES=" ${SNAPREAD_PHASES:-origin-4k snap-4k origin-1m snap-1m} "
run() {  # label uri fio-args...
  local label=$1 uri=$2 c0 c1 j
  shift 2
  case $PHASES in *" $label "*) ;; *) return ;; esac
  c0=$(cpu)
  j=$(fio --name=r --ioengine=nbd --uri="$uri" --time_based --runtime="$RUNTIME" --ramp_time=1 --output-format=json "$@" 2>/dev/null | sed -n '/^{/,$p')
  c1=$(cpu)
  node -e '
    const j = JSON.parse(process.argv[1]).jobs[0].read, [label, c0, c1] = process.argv.slice(2);
    const gib = j.io_bytes / 2 ** 30, t = j.runtime / 1000;
    // CPU over ramp + run; bytes over the run only: scale the bytes by (ramp + run) / run
    const cpuPerGiB = (c1 - c0) / (gib * (t + 1) / t);
    console.log(`${label.padEnd(16)} ${(j.bw_bytes / 2 ** 20).toFixed(1).padStart(8)} MiB/s ${j.iops.toFixed(0).padStart(7)} IOPS  cpu ${cpuPerGiB.toFixed(2)} s/GiB`);
  ' "$j" "$label" "$c0" "$c1"
}
echo "load $(cut -d' ' -f1-3 /proc/loadavg)  size $SIZE  chunks copied: every one"
for r in $(seq 1 "$ROUNDS"); do
  run origin-4k "$U" --rw=randread --bs=4k --iodepth=32
  run snap-4k "$U@s1" --rw=randread --bs=4k --iodepth=32
  run origin-1m "$U" --rw=read --bs=1M --iodepth=16
  run snap-1m "$U@s1" --rw=read --bs=1M --iodepth=16
done
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
