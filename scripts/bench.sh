#!/usr/bin/env bash
# bench.sh: side-by-side benchmark of nbdsnap and `nbdkit file` serving the same image, driven by
# real NBD clients (nbdcopy, fio's nbd engine) over loopback. Run by `npm run bench`.
#
# One run: create a sparse image in a temp dir and fill it with random data, start both servers on
# free 127.0.0.1 ports (they stay up for the whole run, so VmHWM at the end is the peak RSS of the
# run), then for each repetition and each workload run the workload against both servers back to
# back (the order flips every repetition), and finally print the median of every figure and the
# ratio nbdsnap/nbdkit as a table (and as JSON when BENCH_JSON is set).
#
# Environment (defaults):
#   BENCH_SIZE=1G          image size (anything truncate(1) takes; fio uses the whole export)
#   BENCH_RUNTIME=5        seconds per fio run (time based), after BENCH_RAMP=1 s of ramp
#   BENCH_REPEAT=2         repetitions of every workload per server (median reported)
#   BENCH_JOBS=4           connections of the multi-connection fio workloads (numjobs)
#   BENCH_WORKLOADS="..."  subset / order of workloads (default: all, see WORKLOADS below)
#   BENCH_SERVERS="nbdsnap nbdkit"   servers to run (one alone is fine: ratios show "-")
#   BENCH_JSON=FILE        also write the results table as JSON to FILE
#   BENCH_KEEP=1           keep the temp dir (raw fio JSON, server logs) and print its path
#   BENCH_DIR=DIR          parent of the temp dir (default ${TMPDIR:-/tmp})
#   BENCH_NODE_FLAGS=...   extra node flags for nbdsnap, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
#                          (nbdsnap is stopped with SIGTERM, so it exits gracefully and writes it)
#   BENCH_NBDSNAP_ARGS=... extra `nbdsnap serve` options (e.g. "--store FILE --control SOCK")
#   BENCH_NBDKIT_ARGS=...  extra nbdkit options (e.g. "-t 32"), placed before the plugin name
#   UV_THREADPOOL_SIZE     passed through to nbdsnap (bin/nbdsnap.cjs defaults it to 16)
#
# Adding a workload: write `wl_NAME URI SERVER` that runs one client job and calls
#   record METRIC VALUE UNIT BETTER TARGET
# (BETTER: hi|lo; TARGET: "ratio>=X", "ratio<=X", "snap<X", "snap>X" or "-"), add NAME to
# WORKLOADS. Optional hooks `prep_NAME URI SERVER` / `post_NAME URI SERVER` run untimed around it
# (e.g. take a snapshot before "origin writes while a snapshot is held" and drop it afterwards).
# Workloads whose name contains "write" or "cow" are followed by a sync of the image (untimed), so
# dirty pages of one run are not written back during the next one.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE=${BENCH_SIZE:-1G}
RUNTIME=${BENCH_RUNTIME:-5}
RAMP=${BENCH_RAMP:-1}
REPEAT=${BENCH_REPEAT:-2}
JOBS=${BENCH_JOBS:-4}
SERVERS=${BENCH_SERVERS:-nbdsnap nbdkit}
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
fio --enghelp=nbd >/dev/null 2>&1 || die "fio has no nbd engine"

# ------------------------------------------------------------------ temp dir, servers, cleanup
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/nbdsnap-bench.XXXXXX") || die "cannot create a temp dir"
IMG=$WORK/image.raw
SRC=$WORK/source.raw
RAW=$WORK/results.tsv
: >"$RAW"
declare -A PID URI CPU0

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

cleanup() {
  local s
  trap - EXIT INT TERM
  for s in $SERVERS; do stop_server "$s"; done
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
CUR_REP=0 CUR_SERVER='' CUR_WL=''
record() {  # metric value unit better target
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$CUR_REP" "$CUR_SERVER" "$CUR_WL" "$1" "$2" "$3" "$4" "$5" >>"$RAW"
}

# ------------------------------------------------------------------ client helpers
FIO_N=0
run_fio() {  # uri name fio-args... -> prints the path of the JSON result
  local uri=$1 name=$2 out
  shift 2
  FIO_N=$((FIO_N + 1))
  out=$WORK/fio.$FIO_N.$CUR_SERVER.$name.json
  fio --name="$name" --ioengine=nbd --uri="$uri" --group_reporting --output-format=json \
    --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" "$@" >"$out.raw" 2>"$out.err"
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
  record fio_randread_4k_qd32 "$(fio_value "$j" 'j.jobs[0].read.iops')" IOPS hi 'ratio>=0.7'
}

wl_randwrite() {
  local j
  j=$(run_fio "$1" randwrite --rw=randwrite --bs=4k --iodepth=32)
  record fio_randwrite_4k_qd32 "$(fio_value "$j" 'j.jobs[0].write.iops')" IOPS hi 'ratio>=0.7'
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

# ------------------------------------------------------------------ main
for wl in $WORKLOADS; do declare -F "wl_$wl" >/dev/null || die "unknown workload $wl"; done
for s in $SERVERS; do case $s in nbdsnap | nbdkit) ;; *) die "unknown server $s" ;; esac; done

log "creating a $SIZE image in $WORK (sparse, then filled with random data)"
truncate -s "$SIZE" "$IMG" || die "truncate -s $SIZE failed"
BYTES=$(stat -c %s "$IMG")
[ "$BYTES" -ge $((64 * 1048576)) ] || die "BENCH_SIZE must be at least 64M"
head -c "$BYTES" /dev/urandom | dd of="$IMG" bs=1M conv=notrunc iflag=fullblock status=none || die "fill failed"
cp --sparse=never "$IMG" "$SRC"   # nbdcopy write source (random, fully allocated, in page cache)
sync -f "$IMG" 2>/dev/null || sync

read -r -a PORTS <<<"$(free_ports 2)"
i=0
for s in $SERVERS; do
  "start_$s" "${PORTS[$i]}"
  i=$((i + 1))
  CPU0[$s]=$(cpu_seconds "${PID[$s]}")
  log "$s: pid ${PID[$s]}, ${URI[$s]}, size $(nbdinfo --size "${URI[$s]}"), multi-conn $(nbdinfo --can multi-conn "${URI[$s]}" && echo yes || echo no)"
done

LOAD0=$(cut -d' ' -f1 /proc/loadavg)
awk -v l="$LOAD0" -v n="$(nproc)" 'BEGIN { exit !(l > n) }' &&
  log "warning: load average is $LOAD0 on $(nproc) CPUs before the run: other work will skew the figures"
T_START=$(date +%s)
order=($SERVERS)
for rep in $(seq 1 "$REPEAT"); do
  CUR_REP=$rep
  for wl in $WORKLOADS; do
    for s in "${order[@]}"; do
      log "rep $rep/$REPEAT  $wl  $s"
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
done
log "workloads took $(($(date +%s) - T_START)) s"

# ------------------------------------------------------------------ report
CONFIG="size=$SIZE ($BYTES bytes) runtime=${RUNTIME}s ramp=${RAMP}s repeat=$REPEAT jobs=$JOBS uv_threadpool=${UV_THREADPOOL_SIZE:-16(default)} node=$(node --version) nbdkit=$(nbdkit --version | awk '{print $2}') fio=$(fio --version) cpus=$(nproc) loadavg(start,end)=$LOAD0,$(cut -d' ' -f1 /proc/loadavg)"
node - "$RAW" "${BENCH_JSON:-}" "$CONFIG" <<'EOF'
const fs = require('fs');
const [raw, jsonOut, config] = process.argv.slice(2);
const rows = fs.readFileSync(raw, 'utf8').trim().split('\n').filter(Boolean).map((l) => {
  const [rep, server, workload, metric, value, unit, better, target] = l.split('\t');
  return { rep: Number(rep), server, workload, metric, value: Number(value), unit, better, target };
});
const median = (xs) => {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
const metrics = new Map(); // metric -> { workload, unit, better, target, values: { server: [] } }
for (const r of rows) {
  if (!metrics.has(r.metric)) metrics.set(r.metric, { ...r, values: {} });
  (metrics.get(r.metric).values[r.server] ??= []).push(r.value);
}
const table = [];
for (const [metric, m] of metrics) {
  if (metric.startsWith('cpu:')) continue;
  const snap = median(m.values.nbdsnap ?? []);
  const kit = median(m.values.nbdkit ?? []);
  const ratio = snap !== null && kit !== null && kit !== 0 ? snap / kit : null;
  const cpu = metrics.get(`cpu:${m.workload}`);
  let pass = null;
  const t = /^(ratio|snap)([<>]=?)([\d.]+)$/.exec(m.target);
  if (t) {
    const x = t[1] === 'ratio' ? ratio : snap;
    const y = Number(t[3]);
    if (x !== null) pass = { '<': x < y, '<=': x <= y, '>': x > y, '>=': x >= y }[t[2]];
  }
  table.push({
    workload: m.workload, metric, unit: m.unit, better: m.better === 'hi' ? 'higher' : 'lower',
    nbdsnap: snap, nbdkit: kit, ratio, target: m.target === '-' ? null : m.target, pass,
    nbdsnap_runs: m.values.nbdsnap ?? [], nbdkit_runs: m.values.nbdkit ?? [],
    nbdsnap_cpu_pct: cpu ? median(cpu.values.nbdsnap ?? []) : null,
    nbdkit_cpu_pct: cpu ? median(cpu.values.nbdkit ?? []) : null,
  });
}
const f = (v, d) => (v === null || v === undefined ? '-' : v.toFixed(d));
const digits = (v) => (v === null ? 0 : Math.abs(v) >= 100 ? 0 : 1);
const head = ['metric', 'unit', 'nbdsnap', 'nbdkit', 'ratio', 'target', 'ok', 'cpu% snap/kit', 'runs nbdsnap | nbdkit'];
const lines = table.map((r) => [
  r.metric, r.unit, f(r.nbdsnap, digits(r.nbdsnap)), f(r.nbdkit, digits(r.nbdkit)), f(r.ratio, 2),
  r.target ?? '', r.pass === null ? '' : r.pass ? 'yes' : 'NO',
  r.nbdsnap_cpu_pct === null && r.nbdkit_cpu_pct === null ? '' : `${f(r.nbdsnap_cpu_pct, 0)}/${f(r.nbdkit_cpu_pct, 0)}`,
  `${r.nbdsnap_runs.map((v) => f(v, digits(v))).join(' ')} | ${r.nbdkit_runs.map((v) => f(v, digits(v))).join(' ')}`,
]);
const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
const out = (cells) => cells.map((c, i) => (i < 2 || i > 6 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ').trimEnd();
console.log(`\nnbdsnap vs nbdkit file: ${config}`);
console.log('ratio = nbdsnap / nbdkit (medians); MiB/s and IOPS: higher is better; us, MiB, s: lower is better');
console.log('cpu% = server CPU time / wall time of the workload (100 = one core)\n');
console.log(out(head));
console.log(widths.map((w) => '-'.repeat(w)).join('-|-'));
for (const l of lines) console.log(out(l));
if (jsonOut) {
  fs.writeFileSync(jsonOut, `${JSON.stringify({ config, date: new Date().toISOString(), results: table }, null, 2)}\n`);
  console.log(`\nJSON written to ${jsonOut}`);
}
EOF
