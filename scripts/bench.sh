#!/usr/bin/env bash
# bench.sh: benchmark of nbdsnap against other NBD servers on the same image, driven by real NBD
# clients (nbdcopy, fio's nbd engine) over loopback. Run by `npm run bench`. One run, in sections
# (BENCH_SECTIONS), each printed as a table; then the ratios the issues ask for, with targets.
#
#   io        nbdsnap vs `nbdkit file` serving the same image: plain reads and writes. Both servers
#             stay up for the whole section (VmHWM at the end is its peak RSS); for each repetition
#             and workload, both servers back to back (the order flips every repetition).
#   snapshot  (scripts/bench-snapshot.sh) origin writes while one snapshot is held (first write,
#             overwrite) and snapshot reads, vs nbdsnap's plain writes / origin reads, and the same
#             against qemu-nbd serving a qcow2 overlay and `nbdkit --filter=cow file`; peak RSS and
#             heap per copied chunk with a store full of copies.
#   merge     (scripts/bench-merge.sh) merging N MiB back vs nbdcopy of N MiB between two exports;
#             origin random reads during a merge vs idle.
#   backup    (scripts/bench-backup.sh) incremental backup of ~5% scattered changes vs a full
#             nbdcopy of the snapshot: time and bytes; change-tracking cost on 4 KiB writes.
#   scale     (scripts/bench-scale.sh) a 15 TiB sparse origin, 6 snapshots, 20,000 scattered first
#             writes: `nbdinfo --map` of snapshots vs the origin, journal growth over snapshot
#             create/write/delete cycles, peak RSS; restart and heap per copy at 1,000,000 copies.
#   tls       (scripts/bench-tls.sh) nbdcopy read and write over TLS (certificates), vs
#             `nbdkit --tls=require file` on the same image. Not in the default list: run it with
#             BENCH_SECTIONS=tls (needs certtool, from gnutls-bin).
#   abuse     (scripts/bench-abuse.sh) hostile clients (stalled 32 MiB WRITEs, unread 32 MiB READs,
#             idle handshakes) against nbdsnap, nbdkit and qemu-nbd: peak RSS, and a good client's
#             copies meanwhile. Not in the default list: BENCH_SECTIONS=abuse.
#   cluster   (scripts/bench-cluster.sh) a single-node Ceph: nbdsnap in front of an RBD image vs fio
#             talking to the same qemu-nbd directly; a backup to S3 (radosgw) vs to a local file, and
#             its peak RSS. Not in the default list: BENCH_SECTIONS=cluster (needs the Ceph packages).
#   proxy     (scripts/bench-cluster.sh) the cluster's proxy rows without Ceph: nbdsnap in front of
#             qemu-nbd (BENCH_PROXY_PEER=nbdkit: nbdkit file) on a local file, vs that peer directly,
#             with CPU s/GiB. Not in the default list: BENCH_SECTIONS=proxy.
#
# Medians of the repetitions are reported (and as JSON when BENCH_JSON is set).
#
# Environment (defaults):
#   BENCH_SIZE=1G          image size (anything truncate(1) takes; fio uses the whole export)
#   BENCH_RUNTIME=3        seconds per time-based fio run, after BENCH_RAMP=1 s of ramp
#   BENCH_REPEAT=2         repetitions of every io workload per server (median reported)
#   BENCH_SECTION_REPEAT=1 repetitions of the snapshot, merge and backup sections
#   BENCH_SECTIONS="io snapshot merge backup scale"   sections to run, in this order
#   BENCH_JOBS=4           connections of the multi-connection fio workloads (numjobs)
#   BENCH_WORKLOADS="..."  subset / order of io workloads (default: all, see WORKLOADS below)
#   BENCH_SERVERS="nbdsnap nbdkit"   io servers to run (one alone is fine: ratios show "-")
#   BENCH_SNAP_SERVERS="nbdsnap qcow2 nbdkit-cow"   servers of the snapshot section
#   BENCH_FW_CAP=60        time cap (s) of the size-based first-write runs (one pass over the chunks)
#   BENCH_FW_ROUNDS=2      4 KiB first-write passes per server, each on a fresh snapshot / overlay
#   BENCH_MERGE_SIZE=256M  changed data merged back (merge section)
#   BENCH_MERGE_SPEED=32M  merge rate limit (`merge --speed`) of the merge timed under origin reads
#   BENCH_BACKUP_PCT=5     percentage of 64 KiB blocks changed before the incremental backup
#   BENCH_BACKUP_FULL=1    0: do not also time a full `nbdsnap backup` of the snapshot
#   BENCH_CBT_ROUNDS=3     fresh-era 4 KiB write passes per change-tracking setting
#   BENCH_SCALE_*          sizes of the scale section (see scripts/bench-scale.sh)
#   BENCH_JSON=FILE        also write the results as JSON to FILE
#   BENCH_KEEP=1           keep the temp dir (raw fio JSON, server logs) and print its path
#   BENCH_DIR=DIR          parent of the temp dir (default ${TMPDIR:-/tmp})
#   BENCH_NODE_FLAGS=...   extra node flags for nbdsnap, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
#                          (nbdsnap is stopped with SIGTERM, so it exits gracefully and writes it)
#   BENCH_NBDSNAP_ARGS=... extra `nbdsnap serve` options of the io section's nbdsnap
#   BENCH_NBDKIT_ARGS=...  extra nbdkit options (e.g. "-t 32"), placed before the plugin name
#   UV_THREADPOOL_SIZE     passed through to nbdsnap (bin/nbdsnap.cjs defaults it to 16)
#
# Adding an io workload: write `wl_NAME URI SERVER` that runs one client job and calls
#   record METRIC VALUE UNIT BETTER TARGET
# (BETTER: hi|lo; TARGET: "ratio>=X", "ratio<=X", "snap<X", "snap>X" or "-"), add NAME to
# WORKLOADS. Optional hooks `prep_NAME URI SERVER` / `post_NAME URI SERVER` run untimed around it.
# Workloads whose name contains "write" or "cow" are followed by a sync of the image (untimed), so
# dirty pages of one run are not written back during the next one. A section is a function
# `section_NAME` that starts its own servers (start_nbdsnap_as, start_qcow2, start_nbdkit_cow),
# records with CUR_TABLE=NAME and CUR_SERVER set, and stops them; `ratio` (below) declares a
# ratio of two medians for the final table.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE=${BENCH_SIZE:-1G}
RUNTIME=${BENCH_RUNTIME:-3}
RAMP=${BENCH_RAMP:-1}
REPEAT=${BENCH_REPEAT:-2}
JOBS=${BENCH_JOBS:-4}
SERVERS=${BENCH_SERVERS:-nbdsnap nbdkit}
SECTIONS=${BENCH_SECTIONS:-io snapshot merge backup scale}
SECTION_REPEAT=${BENCH_SECTION_REPEAT:-1}
WORKLOADS=${BENCH_WORKLOADS:-nbdcopy_read nbdcopy_write seqread seqwrite randread randwrite randread_mc randwrite_mc lat_randread}
NODE_FLAGS=${BENCH_NODE_FLAGS:-}
NBDSNAP_ARGS=${BENCH_NBDSNAP_ARGS:-}
NBDKIT_ARGS=${BENCH_NBDKIT_ARGS:-}
EXPORT=bench

die() { echo "bench.sh: $*" >&2; exit 1; }
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

for t in node fio nbdcopy nbdinfo nbdkit truncate; do
  command -v "$t" >/dev/null || die "$t not found"
done
case " $SECTIONS " in *" snapshot "*)
  for t in qemu-img qemu-nbd; do command -v "$t" >/dev/null || die "$t not found (snapshot section)"; done ;;
esac
fio --enghelp=nbd >/dev/null 2>&1 || die "fio has no nbd engine"

# ------------------------------------------------------------------ temp dir, servers, cleanup
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/nbdsnap-bench.XXXXXX") || die "cannot create a temp dir"
IMG=$WORK/image.raw
SRC=$WORK/source.raw
RAW=$WORK/results.tsv
RATIOS=$WORK/ratios.tsv
: >"$RAW"
: >"$RATIOS"
declare -A PID URI CPU0 CTL

stop_server() {  # name: SIGTERM by PID, wait (a profile may be being written), then SIGKILL
  local name=$1 pid=${PID[$1]:-} i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop in 10 s, killing it"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  PID[$name]=
}

cleanup() {  # every server this script started (by its PID), then the temp dir
  local s
  trap - EXIT INT TERM
  for s in "${!PID[@]}"; do stop_server "$s"; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() {  # n -> n distinct free TCP ports on 127.0.0.1
  node -e '
    const net = require("net");
    const n = Number(process.argv[1]);
    const servers = Array.from({ length: n }, () => net.createServer());
    Promise.all(servers.map((s) => new Promise((r) => s.listen(0, "127.0.0.1", () => r(s.address().port)))))
      .then((ports) => { console.log(ports.join(" ")); servers.forEach((s) => s.close()); });
  ' "$1"
}

wait_pidfile() {  # name pidfile bgpid
  local i
  for i in $(seq 1 300); do
    [ -s "$2" ] && return 0
    kill -0 "$3" 2>/dev/null || { cat "$WORK/$1.log" >&2; die "$1 exited before it was ready"; }
    sleep 0.1
  done
  die "$1 did not write its pid file within 30 s"
}

start_nbdsnap() {  # port
  # shellcheck disable=SC2086
  node $NODE_FLAGS "$ROOT/bin/nbdsnap.cjs" serve "$EXPORT=$IMG" -p "$1" -b 127.0.0.1 \
    --pid-file "$WORK/nbdsnap.pid" --log-level warn $NBDSNAP_ARGS >"$WORK/nbdsnap.log" 2>&1 &
  PID[nbdsnap]=$!
  wait_pidfile nbdsnap "$WORK/nbdsnap.pid" "${PID[nbdsnap]}"
  PID[nbdsnap]=$(cat "$WORK/nbdsnap.pid")
  URI[nbdsnap]=nbd://127.0.0.1:$1/$EXPORT
}

start_nbdsnap_as() {  # name port serve-args... (a section's own nbdsnap; URI[name] is nbd://HOST:PORT)
  local name=$1 port=$2
  shift 2
  rm -f "$WORK/$name.pid"
  # shellcheck disable=SC2086
  BENCH_HEAP_OUT="$WORK/$name.heap" node $NODE_FLAGS --expose-gc --require "$ROOT/scripts/bench-heap.cjs" "$ROOT/bin/nbdsnap.cjs" serve "$@" \
    -p "$port" -b 127.0.0.1 --pid-file "$WORK/$name.pid" --log-level warn >"$WORK/$name.log" 2>&1 &
  PID[$name]=$!
  wait_pidfile "$name" "$WORK/$name.pid" "${PID[$name]}"
  PID[$name]=$(cat "$WORK/$name.pid")
  URI[$name]=nbd://127.0.0.1:$port
}

start_nbdkit() {  # port
  # shellcheck disable=SC2086
  nbdkit -f --exit-with-parent -P "$WORK/nbdkit.pid" -i 127.0.0.1 -p "$1" $NBDKIT_ARGS \
    file "file=$IMG" >"$WORK/nbdkit.log" 2>&1 &
  PID[nbdkit]=$!
  wait_pidfile nbdkit "$WORK/nbdkit.pid" "${PID[nbdkit]}"
  PID[nbdkit]=$(cat "$WORK/nbdkit.pid")
  URI[nbdkit]=nbd://127.0.0.1:$1/
}

cpu_seconds() {  # pid -> utime+stime in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null
}

hwm_mib() {  # pid -> VmHWM in MiB
  awk '/^VmHWM:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status" 2>/dev/null
}

# ------------------------------------------------------------------ recording
CUR_REP=0 CUR_SERVER='' CUR_WL='' CUR_TABLE=io
record() {  # metric value unit better target
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$CUR_REP" "$CUR_SERVER" "$CUR_WL" "$1" "$2" "$3" "$4" "$5" \
    "$CUR_TABLE" >>"$RAW"
}

ratio() {  # label numerator denominator target [note]: NUM and DEN are TABLE/SERVER/METRIC (medians)
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$RATIOS"
}

# ------------------------------------------------------------------ client helpers
FIO_N=0
run_fio() {  # uri name fio-args... -> prints the path of the JSON result (time based)
  local uri=$1 name=$2
  shift 2
  run_fio_once "$uri" "$name" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" "$@"
}

run_fio_once() {  # uri name fio-args... -> path of the JSON result (the args say when to stop)
  local uri=$1 name=$2 out
  shift 2
  FIO_N=$((FIO_N + 1))
  out=$WORK/fio.$FIO_N.$CUR_SERVER.$name.json
  fio --name="$name" --ioengine=nbd --uri="$uri" --group_reporting --output-format=json \
    "$@" >"$out.raw" 2>"$out.err"
  # the nbd engine prints "fio: connected to NBD server" on stdout before the JSON
  sed -n '/^{/,$p' "$out.raw" >"$out"
  rm -f "$out.raw"
  echo "$out"
}

fio_value() {  # json-file js-expression-of-j (fio's JSON) -> number, or NaN on any error
  node -e '
    const fs = require("fs");
    try {
      const j = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
      if (j.jobs[0].error !== 0) throw new Error(`fio error ${j.jobs[0].error}`);
      const v = new Function("j", `return (${process.argv[2]});`)(j);
      if (typeof v !== "number" || !Number.isFinite(v)) throw new Error(`no value: ${process.argv[2]}`);
      console.log(v);
    } catch (e) {
      console.error(`bench.sh: ${process.argv[1]}: ${e.message}`);
      console.log("NaN");
    }
  ' "$1" "$2"
}

timed_nbdcopy() {  # src dst -> MiB/s of the image size, or NaN
  local t0 t1 bytes
  bytes=$(stat -c %s "$IMG")
  t0=$(date +%s.%N)
  if ! nbdcopy "$1" "$2" 2>"$WORK/nbdcopy.$CUR_SERVER.err"; then
    cat "$WORK/nbdcopy.$CUR_SERVER.err" >&2
    echo NaN
    return
  fi
  t1=$(date +%s.%N)
  awk -v s="$bytes" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", s / 1048576 / (b - a) }'
}

# ------------------------------------------------------------------ workloads (wl_NAME URI SERVER)
wl_nbdcopy_read() {
  record nbdcopy_read "$(timed_nbdcopy "$1" null:)" MiB/s hi 'ratio>=1.0'
}

wl_nbdcopy_write() {
  record nbdcopy_write "$(timed_nbdcopy "$SRC" "$1")" MiB/s hi 'ratio>=1.0'
}

wl_seqread() {
  local j
  j=$(run_fio "$1" seqread --rw=read --bs=1M --iodepth=16)
  record fio_seqread_1M_qd16 "$(fio_value "$j" 'j.jobs[0].read.bw_bytes / 1048576')" MiB/s hi 'ratio>=1.0'
}

wl_seqwrite() {
  local j
  j=$(run_fio "$1" seqwrite --rw=write --bs=1M --iodepth=16)
  record fio_seqwrite_1M_qd16 "$(fio_value "$j" 'j.jobs[0].write.bw_bytes / 1048576')" MiB/s hi 'ratio>=1.0'
}

wl_randread() {
  local j
  j=$(run_fio "$1" randread --rw=randread --bs=4k --iodepth=32)
  record fio_randread_4k_qd32 "$(fio_value "$j" 'j.jobs[0].read.iops')" IOPS hi 'ratio>=0.9'
}

wl_randwrite() {
  local j
  j=$(run_fio "$1" randwrite --rw=randwrite --bs=4k --iodepth=32)
  record fio_randwrite_4k_qd32 "$(fio_value "$j" 'j.jobs[0].write.iops')" IOPS hi 'ratio>=0.9'
}

wl_randread_mc() {
  local j
  j=$(run_fio "$1" randread_mc --rw=randread --bs=4k --iodepth=32 --numjobs="$JOBS")
  record "fio_randread_4k_qd32_x${JOBS}conn" "$(fio_value "$j" 'j.jobs[0].read.iops')" IOPS hi 'ratio>=0.7'
}

wl_randwrite_mc() {
  local j
  j=$(run_fio "$1" randwrite_mc --rw=randwrite --bs=4k --iodepth=32 --numjobs="$JOBS")
  record "fio_randwrite_4k_qd32_x${JOBS}conn" "$(fio_value "$j" 'j.jobs[0].write.iops')" IOPS hi 'ratio>=0.7'
}

wl_lat_randread() {
  local j
  j=$(run_fio "$1" lat_randread --rw=randread --bs=4k --iodepth=1 --lat_percentiles=1)
  record lat_randread_4k_qd1_p50 "$(fio_value "$j" 'j.jobs[0].read.lat_ns.percentile["50.000000"] / 1000')" us lo -
  record lat_randread_4k_qd1_p99 "$(fio_value "$j" 'j.jobs[0].read.lat_ns.percentile["99.000000"] / 1000')" us lo -
}

run_workload() {  # workload server
  local wl=$1 s=$2 uri=${URI[$2]} c0 c1 t0 t1
  CUR_WL=$wl CUR_SERVER=$s
  if declare -F "prep_$wl" >/dev/null; then "prep_$wl" "$uri" "$s"; fi
  c0=$(cpu_seconds "${PID[$s]}")
  t0=$(date +%s.%N)
  "wl_$wl" "$uri" "$s"
  t1=$(date +%s.%N)
  c1=$(cpu_seconds "${PID[$s]}")
  kill -0 "${PID[$s]}" 2>/dev/null || die "$s died during $wl (log: $WORK/$s.log)"
  # server CPU use while the workload ran (including client connect and fio ramp), in % of one core
  record "cpu:$wl" "$(awk -v a="$c0" -v b="$c1" -v x="$t0" -v y="$t1" 'BEGIN { printf "%.0f\n", 100 * (b - a) / (y - x) }')" % lo -
  if declare -F "post_$wl" >/dev/null; then "post_$wl" "$uri" "$s"; fi
  case $wl in *write* | *cow*) sync -f "$IMG" 2>/dev/null || sync ;; esac
}

# ------------------------------------------------------------------ the io section
section_io() {
  local s i rep wl order ports
  CUR_TABLE=io
  read -r -a ports <<<"$(free_ports 2)"
  i=0
  for s in $SERVERS; do
    "start_$s" "${ports[$i]}"
    i=$((i + 1))
    CPU0[$s]=$(cpu_seconds "${PID[$s]}")
    log "$s: pid ${PID[$s]}, ${URI[$s]}, size $(nbdinfo --size "${URI[$s]}"), multi-conn $(nbdinfo --can multi-conn "${URI[$s]}" && echo yes || echo no)"
  done
  order=($SERVERS)
  for rep in $(seq 1 "$REPEAT"); do
    CUR_REP=$rep
    for wl in $WORKLOADS; do
      for s in "${order[@]}"; do
        log "io: rep $rep/$REPEAT  $wl  $s"
        run_workload "$wl" "$s"
      done
    done
    # flip the order every repetition, so neither server always runs first on a fresh page cache
    order=($(printf '%s\n' "${order[@]}" | tac))
  done
  CUR_REP=0 CUR_WL=server
  for s in $SERVERS; do
    CUR_SERVER=$s
    record peak_rss_VmHWM "$(hwm_mib "${PID[$s]}")" MiB lo 'snap<150'
    record server_cpu_total "$(awk -v a="${CPU0[$s]}" -v b="$(cpu_seconds "${PID[$s]}")" 'BEGIN { printf "%.1f\n", b - a }')" s lo -
    stop_server "$s"
  done
}

# shellcheck source=scripts/bench-snapshot.sh
. "$ROOT/scripts/bench-snapshot.sh"
# shellcheck source=scripts/bench-merge.sh
. "$ROOT/scripts/bench-merge.sh"
# shellcheck source=scripts/bench-backup.sh
. "$ROOT/scripts/bench-backup.sh"
# shellcheck source=scripts/bench-scale.sh
. "$ROOT/scripts/bench-scale.sh"
# shellcheck source=scripts/bench-tls.sh
. "$ROOT/scripts/bench-tls.sh"
# shellcheck source=scripts/bench-abuse.sh
. "$ROOT/scripts/bench-abuse.sh"
# shellcheck source=scripts/bench-cluster.sh
. "$ROOT/scripts/bench-cluster.sh"

# ------------------------------------------------------------------ main
for wl in $WORKLOADS; do declare -F "wl_$wl" >/dev/null || die "unknown workload $wl"; done
for s in $SERVERS; do case $s in nbdsnap | nbdkit) ;; *) die "unknown server $s" ;; esac; done
for sec in $SECTIONS; do declare -F "section_$sec" >/dev/null || die "unknown section $sec"; done

log "creating a $SIZE image in $WORK (sparse, then filled with random data)"
truncate -s "$SIZE" "$IMG" || die "truncate -s $SIZE failed"
BYTES=$(stat -c %s "$IMG")
[ "$BYTES" -ge $((64 * 1048576)) ] || die "BENCH_SIZE must be at least 64M"
head -c "$BYTES" /dev/urandom | dd of="$IMG" bs=1M conv=notrunc iflag=fullblock status=none || die "fill failed"
cp --sparse=never "$IMG" "$SRC"   # nbdcopy write source (random, fully allocated, in page cache)
sync -f "$IMG" 2>/dev/null || sync

# what is benchmarked: the commit, whether src/ has uncommitted changes, and whether nbdsnap runs
# from the bundle (dist/, as bin/nbdsnap.cjs chooses) or from the sources through tsx
TREE="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" status --porcelain -- src 2>/dev/null | grep -q . && echo '+uncommitted-src')"
CLI=$(node -e '
  const fs = require("fs"), path = require("path");
  const newest = (d) => Math.max(0, ...fs.readdirSync(d, { withFileTypes: true }).map((e) =>
    e.isDirectory() ? newest(path.join(d, e.name)) : e.name.endsWith(".ts") ? fs.statSync(path.join(d, e.name)).mtimeMs : 0));
  try { console.log(fs.statSync(process.argv[1] + "/dist/nbdsnap.mjs").mtimeMs >= newest(process.argv[1] + "/src") ? "dist" : "tsx") }
  catch { console.log("tsx") }' "$ROOT")
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
awk -v l="$LOAD0" -v n="$(nproc)" 'BEGIN { exit !(l > n) }' &&
  log "warning: load average is $LOAD0 on $(nproc) CPUs before the run: other work will skew the figures"
T_START=$(date +%s)
run_section() {  # name rep: in a subshell, so that a failing section stops its own servers and the
  # run goes on with the next one (results are appended to files, so they survive the subshell)
  (
    trap 'for s in "${!PID[@]}"; do stop_server "$s"; done' EXIT
    trap 'exit 130' INT TERM
    CUR_REP=$2 CUR_TABLE=$1 CUR_WL=$1
    "section_$1"
  ) || log "section $1 failed (exit $?); going on with the next"
}

for sec in $SECTIONS; do
  t0=$(date +%s)
  if [ "$sec" = io ]; then
    run_section io 0
  else
    for rep in $(seq 1 "$SECTION_REPEAT"); do
      log "$sec: rep $rep/$SECTION_REPEAT"
      run_section "$sec" "$rep"
    done
  fi
  log "section $sec took $(($(date +%s) - t0)) s"
done
log "workloads took $(($(date +%s) - T_START)) s"

# ------------------------------------------------------------------ report
for sec in $SECTIONS; do
  if declare -F "ratios_$sec" >/dev/null; then "ratios_$sec"; fi
done
CONFIG="tree=$TREE nbdsnap-code=$CLI size=$SIZE ($BYTES bytes) runtime=${RUNTIME}s ramp=${RAMP}s repeat=$REPEAT section_repeat=$SECTION_REPEAT jobs=$JOBS uv_threadpool=${UV_THREADPOOL_SIZE:-16(default)} node=$(node --version) nbdkit=$(nbdkit --version | awk '{print $2}') qemu-nbd=$(qemu-nbd --version 2>/dev/null | awk 'NR==1 {print $2}') fio=$(fio --version) cpus=$(nproc) loadavg(start,end)=$LOAD0,$(cut -d' ' -f1 /proc/loadavg) took=$(($(date +%s) - T_START))s"
node "$ROOT/scripts/bench-report.mjs" "$RAW" "$RATIOS" "${BENCH_JSON:-}" "$CONFIG"
