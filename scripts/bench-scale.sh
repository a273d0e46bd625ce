# shellcheck shell=bash
# bench-scale.sh: sourced by scripts/bench.sh. The scale section (issue 10: metadata that scales
# with what changed). Uses helpers of scripts/bench-snapshot.sh (start_nbdsnap_as, snapcli, alive).
#
# Workload: a sparse origin of BENCH_SCALE_SIZE (15T), 64 KiB chunks, a sparse store file;
# BENCH_SCALE_SNAPS (6) snapshots s1..sN, each followed by its share of BENCH_SCALE_WRITES (20,000)
# scattered 4 KiB first writes (one per randomly chosen chunk, QD32 through libnbd's python
# binding), so every era has copies and dirty blocks. Then, timed:
#   map_origin            `nbdinfo --map` of the origin (base:allocation): the baseline
#   map_snap_alloc        `nbdinfo --map` of s1 (reads all the copies) in base:allocation
#   map_snap_depth        the same in qemu:allocation-depth
#   map_snap_dirty        `nbdinfo --map=qemu:dirty-bitmap:s1` of sN (every era but the first)
# each with BENCH_SCALE_MAP_RUNS (2) runs (median), as a ratio to map_origin (target <= 2).
# Journal: BENCH_SCALE_CYCLES (10) cycles of (create snapshot c, BENCH_SCALE_CYCLE_WRITES (2,000)
# first writes, delete c), the same scattered chunks every cycle: the first cycle also copies them
# for s1..sN (live state grows once), every later cycle only for c, freed by the delete. So the
# live state after cycle 1 and after the last is the same; `store status --json` journalBytes
# after each (target: last <= 1.5 x first). Peak RSS (VmHWM) of the server over the whole section
# (target < 150 MiB). Restart with 1,000,000 copies and heap per copied chunk: from
# scripts/restart-scale.ts and scripts/extable-scale.ts when they exist ("not available" else).
#
# Environment (defaults): BENCH_SCALE_SIZE=15T BENCH_SCALE_SNAPS=6 BENCH_SCALE_WRITES=20000
#   BENCH_SCALE_CYCLES=10 BENCH_SCALE_CYCLE_WRITES=2000 BENCH_SCALE_MAP_RUNS=2
#   BENCH_SCALE_RESTART_COPIES=1000000 (passed to restart-scale.ts / extable-scale.ts)
#   NBD_PYTHON=/usr/bin/python3 (a python3 with the libnbd binding)

SCALE_SIZE=${BENCH_SCALE_SIZE:-15T}
SCALE_SNAPS=${BENCH_SCALE_SNAPS:-6}
SCALE_WRITES=${BENCH_SCALE_WRITES:-20000}
SCALE_CYCLES=${BENCH_SCALE_CYCLES:-10}
SCALE_CYCLE_WRITES=${BENCH_SCALE_CYCLE_WRITES:-2000}
SCALE_MAP_RUNS=${BENCH_SCALE_MAP_RUNS:-2}
SCALE_RESTART_COPIES=${BENCH_SCALE_RESTART_COPIES:-1000000}
SCALE_PY=${NBD_PYTHON:-/usr/bin/python3}

scale_writes() {  # uri count seed: COUNT 4 KiB writes, each in a random chunk at a random 4K
  # offset, QD32, then a flush; the same seed gives the same chunks
  "$SCALE_PY" - "$@" <<'EOF'
import random, sys
import nbd
uri, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
h = nbd.NBD()
h.connect_uri(uri)
chunks = h.get_size() // 65536
buf = nbd.Buffer.from_bytearray(bytearray(b"w" * 4096))
cookies = []
for i in range(count):
    while h.aio_in_flight() >= 32:
        h.poll(-1)
    cookies.append(h.aio_pwrite(buf, rng.randrange(chunks) * 65536 + rng.randrange(16) * 4096))
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    h.aio_command_completed(c)  # raises if the write failed
h.flush()
h.shutdown()
EOF
}

scale_map() {  # uri context -> seconds of `nbdinfo --map=CONTEXT URI` (NaN if it failed); the
  # number of extents goes to $WORK/scale.map.n
  local t0 t1
  t0=$(date +%s.%N)
  if ! nbdinfo "--map=$2" "$1" >"$WORK/scale.map" 2>"$WORK/scale.map.err"; then
    log "warning: nbdinfo --map=$2 $1 failed: $(head -3 "$WORK/scale.map.err")"
    echo NaN
    return
  fi
  t1=$(date +%s.%N)
  wc -l <"$WORK/scale.map" >"$WORK/scale.map.n"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

rec_map() {  # metric uri context: SCALE_MAP_RUNS timed maps, and the extents of the last
  local r
  for r in $(seq 1 "$SCALE_MAP_RUNS"); do
    CUR_REP=$r record "$1" "$(scale_map "$2" "$3")" s lo -
  done
  record "$1_extents" "$(cat "$WORK/scale.map.n" 2>/dev/null || echo NaN)" extents - -
}

journal_bytes() {  # name -> the store's journal bytes (`store status --json`)
  node "$ROOT/bin/nbdsnap.cjs" store status --json --control "${CTL[$1]}" |
    node -e 'try { console.log(JSON.parse(require("fs").readFileSync(0, "utf8")).journalBytes ?? "NaN") }
      catch { console.log("NaN") }'
}

scale_script() {  # name key=metric:unit:target...: run scripts/NAME.ts (if it exists) with
  # BENCH_SCALE_RESTART_COPIES and record field KEY of the JSON object on its last line of output
  local script=$ROOT/scripts/$1.ts name=$1 out='{}' f key spec metric unit target v
  shift
  if [ ! -f "$script" ]; then
    log "scale: scripts/$name.ts not available"
  else
    log "scale: scripts/$name.ts $SCALE_RESTART_COPIES"
    if ! out=$(cd "$ROOT" && node --expose-gc --import tsx "$script" "$SCALE_RESTART_COPIES" 2>"$WORK/$name.err" | tail -1) ||
      [ -z "$out" ]; then
      log "warning: scripts/$name.ts failed: $(tail -3 "$WORK/$name.err")"
      out='{}'
    fi
  fi
  for f in "$@"; do
    key=${f%%=*} spec=${f#*=}
    IFS=: read -r metric unit target <<<"$spec"
    v=$(node -e 'try {
        // KEY: names separated by "|"; the exact name first, else a field whose name contains one
        const j = JSON.parse(process.argv[1]);
        const names = process.argv[2].split("|");
        const found = names.find((n) => n in j) ?? Object.keys(j).find((k) =>
          names.some((n) => k.toLowerCase().includes(n.toLowerCase())));
        const v = found === undefined ? undefined : j[found];
        console.log(typeof v === "number" && Number.isFinite(v) ? v : "NaN");
      } catch { console.log("NaN") }' "$out" "$key")
    record "$metric" "$v" "$unit" lo "$target"
  done
}

section_scale() {
  local d=$WORK/scale o i n per j1 jn t0 last
  CUR_SERVER=nbdsnap
  command -v "$SCALE_PY" >/dev/null && "$SCALE_PY" -c 'import nbd' 2>/dev/null ||
    die "scale: $SCALE_PY has no libnbd binding (set NBD_PYTHON)"
  mkdir -p "$d"
  rm -f "$d/disk.img" "$d/store.img"
  truncate -s "$SCALE_SIZE" "$d/disk.img" || die "scale: this filesystem cannot hold a $SCALE_SIZE sparse file"
  # room for every copy (each a whole chunk) and the journal; sparse, so only what is used costs
  truncate -s $(((SCALE_WRITES + 2 * SCALE_CYCLE_WRITES) * 65536 * 2 + 256 * 1048576)) "$d/store.img"
  CTL[scale]=$WORK/scale.ctl
  start_nbdsnap_as scale "$(free_ports 1)" "disk=$d/disk.img" --store "$d/store.img" --control "${CTL[scale]}" \
    --chunk-size 64K
  o=${URI[scale]}/disk
  log "scale: nbdsnap (pid ${PID[scale]}) $o, $SCALE_SIZE origin, $SCALE_SNAPS snapshots, $SCALE_WRITES first writes"
  t0=$(date +%s.%N)
  per=$((SCALE_WRITES / SCALE_SNAPS))
  for i in $(seq 1 "$SCALE_SNAPS"); do
    snapcli scale snapshot create disk "s$i"
    n=$per
    [ "$i" = "$SCALE_SNAPS" ] && n=$((SCALE_WRITES - per * (SCALE_SNAPS - 1)))
    scale_writes "$o" "$n" "$i" || die "scale: writes failed"
  done
  alive scale
  record setup_seconds "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }')" s lo -
  record copied_chunks "$(snap_chunks scale s1)" chunks - -
  record rss_after_setup "$(awk '/^VmRSS:/ { printf "%.1f\n", $2 / 1024 }' "/proc/${PID[scale]}/status")" MiB lo -

  last=s$SCALE_SNAPS
  rec_map map_origin "$o" base:allocation
  rec_map map_snap_alloc "$o@s1" base:allocation
  rec_map map_snap_depth "$o@s1" qemu:allocation-depth
  rec_map map_snap_dirty "$o@$last" qemu:dirty-bitmap:s1
  alive scale

  for i in $(seq 1 "$SCALE_CYCLES"); do
    snapcli scale snapshot create disk "c$i"
    scale_writes "$o" "$SCALE_CYCLE_WRITES" 1000 || die "scale: cycle writes failed"
    snapcli scale snapshot delete "disk@c$i"
    [ "$i" = 1 ] && j1=$(journal_bytes scale)
  done
  jn=$(journal_bytes scale)
  record journal_after_1_cycle "$(awk -v b="$j1" 'BEGIN { printf "%.2f\n", b / 1048576 }')" MiB lo -
  record "journal_after_${SCALE_CYCLES}_cycles" "$(awk -v b="$jn" 'BEGIN { printf "%.2f\n", b / 1048576 }')" MiB lo -
  alive scale
  record peak_rss_VmHWM "$(hwm_mib "${PID[scale]}")" MiB lo 'snap<150'
  stop_server scale
  rm -f "$d/disk.img" "$d/store.img"

  scale_script restart-scale copies=restart_copies:chunks:- 'restartSeconds|seconds=restart_seconds:s:snap<5' \
    journalBytes=restart_journal_bytes:B:- 'peakRssMiB=restart_peak_rss:MiB:-' \
    checkpointSeconds=restart_checkpoint_seconds:s:- checkpointBytes=restart_checkpoint_bytes:B:-
  scale_script extable-scale 'bytesPerCopy|bytesPerChunk|perCopy|perChunk=heap_per_copied_chunk:B:snap<=32'
}

ratios_scale() {
  local t=scale/nbdsnap
  ratio 'scale: snapshot map base:allocation / origin map' $t/map_snap_alloc $t/map_origin 'ratio<=2'
  ratio 'scale: snapshot map qemu:allocation-depth / origin map' $t/map_snap_depth $t/map_origin 'ratio<=2'
  ratio 'scale: snapshot map qemu:dirty-bitmap / origin map' $t/map_snap_dirty $t/map_origin 'ratio<=2'
  ratio "scale: journal after $SCALE_CYCLES cycles / after 1" "$t/journal_after_${SCALE_CYCLES}_cycles" \
    $t/journal_after_1_cycle 'ratio<=1.5'
}
