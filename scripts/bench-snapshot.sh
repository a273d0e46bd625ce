# shellcheck shell=bash
# bench-snapshot.sh: sourced by scripts/bench.sh. Helpers shared by the snapshot, merge and backup
# sections (section servers, size-based fio runs, nbdsnap CLI and heap), and the snapshot section
# (issue 4): origin writes while one snapshot is held — the first write to each chunk and the
# overwrite — and snapshot reads, against nbdsnap's own plain writes and origin reads, and the
# same workloads against qemu-nbd serving a qcow2 overlay and nbdkit's cow filter.

SNAP_SERVERS=${BENCH_SNAP_SERVERS:-nbdsnap qcow2 nbdkit-cow}
FW_CAP=${BENCH_FW_CAP:-60}
FW_ROUNDS=${BENCH_FW_ROUNDS:-2}
CHUNK=65536   # nbdsnap's default chunk, qcow2's default cluster, the cow filter's default block

# ------------------------------------------------------------------ section servers
store_file() {  # path: a fresh sparse store with room for a full copy of the image, and journal
  rm -f "$1"
  truncate -s $((BYTES + BYTES / 4 + 64 * 1048576)) "$1"
}

start_snapd() {  # name store [serve-args...]: nbdsnap serving $EXPORT=$IMG with a store and control
  local name=$1 store=$2
  shift 2
  store_file "$store"
  CTL[$name]=$WORK/$name.ctl
  start_nbdsnap_as "$name" "$(free_ports 1)" "$EXPORT=$IMG" --store "$store" --control "${CTL[$name]}" "$@"
}

start_qcow2() {  # name: qemu-nbd on a fresh qcow2 overlay whose backing file is the image
  local name=$1 port
  port=$(free_ports 1)
  rm -f "$WORK/$name.qcow2" "$WORK/$name.pid"
  qemu-img create -q -f qcow2 -b "$IMG" -F raw "$WORK/$name.qcow2" || die "qemu-img create failed"
  qemu-nbd --persistent --shared=8 -f qcow2 -b 127.0.0.1 -p "$port" --pid-file "$WORK/$name.pid" \
    "$WORK/$name.qcow2" >"$WORK/$name.log" 2>&1 &
  PID[$name]=$!
  wait_pidfile "$name" "$WORK/$name.pid" "${PID[$name]}"
  URI[$name]=nbd://127.0.0.1:$port/
}

start_nbdkit_cow() {  # name: nbdkit --filter=cow file IMG (its overlay is a temp file in $WORK)
  local name=$1 port
  port=$(free_ports 1)
  rm -f "$WORK/$name.pid"
  TMPDIR=$WORK nbdkit -f --exit-with-parent -P "$WORK/$name.pid" -i 127.0.0.1 -p "$port" --filter=cow \
    file "file=$IMG" >"$WORK/$name.log" 2>&1 &
  PID[$name]=$!
  wait_pidfile "$name" "$WORK/$name.pid" "${PID[$name]}"
  PID[$name]=$(cat "$WORK/$name.pid")
  URI[$name]=nbd://127.0.0.1:$port/
}

alive() {  # name: die unless the server still runs
  kill -0 "${PID[$1]}" 2>/dev/null || die "$1 died (log: $WORK/$1.log)"
}

snapcli() {  # name nbdsnap-args...: the nbdsnap CLI against server NAME's control socket
  local name=$1
  shift
  node "$ROOT/bin/nbdsnap.cjs" "$@" --control "${CTL[$name]}" >>"$WORK/$name.cli" 2>&1 ||
    die "nbdsnap $* failed: $(tail -3 "$WORK/$name.cli")"
}

snap_chunks() {  # name snapshot: chunks the snapshot holds in the store
  node "$ROOT/bin/nbdsnap.cjs" status --json --control "${CTL[$1]}" |
    node -e 'const s = JSON.parse(require("fs").readFileSync(0, "utf8"));
      console.log(s.snapshots.find((x) => x.name === process.argv[1])?.chunksInStore ?? "NaN")' "$2"
}

heap_used() {  # name: heapUsed after a full GC (scripts/bench-heap.cjs), in bytes
  local out=$WORK/$1.heap i
  rm -f "$out"
  kill -USR2 "${PID[$1]}" 2>/dev/null
  for i in $(seq 1 100); do [ -s "$out" ] && break; sleep 0.05; done
  node -e 'try { console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).heapUsed) }
    catch { console.log("NaN") }' "$out"
}

settle() {  # untimed: write back what the last workload dirtied (image, store, overlay: one fs)
  sync -f "$IMG" 2>/dev/null || sync
}

# ------------------------------------------------------------------ size-based fio runs
w4k_iolog() {  # -> an fio iolog (job "w4k"): one 4 KiB write at a random 4K offset in every chunk,
  # the chunks in random order; then 64 reads of block 0, so that the writes are all complete
  # before fio reaches the end of the log (it drops what is in flight there). Made once per run.
  local log=$WORK/w4k.iolog
  if [ ! -s "$log" ]; then
    node -e '
      const [bytes, chunk, path] = [Number(process.argv[1]), Number(process.argv[2]), process.argv[3]];
      const n = Math.floor(bytes / chunk);
      const order = Array.from({ length: n }, (_, i) => i);
      for (let i = n - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1));
        [order[i], order[j]] = [order[j], order[i]];
      }
      const per = chunk / 4096;
      const out = ["fio version 2 iolog", "w4k.0.0 add", "w4k.0.0 open"];
      for (const c of order) out.push(`w4k.0.0 write ${c * chunk + 4096 * Math.floor(Math.random() * per)} 4096`);
      for (let i = 0; i < 64; i++) out.push("w4k.0.0 read 0 4096");
      require("fs").writeFileSync(path, `${out.join("\n")}\n`);
    ' "$BYTES" "$CHUNK" "$log"
  fi
  echo "$log"
}

W4K_LAST=''
fio_w4k() {  # uri -> JSON path: the w4k log replayed at QD32 (size based, capped at BENCH_FW_CAP s)
  local n=$((BYTES / CHUNK))
  run_fio_once "$1" w4k --read_iolog="$(w4k_iolog)" --replay_no_stall=1 --iodepth=32 --number_ios="$n" \
    --runtime="$FW_CAP"
}

fio_w1m() {  # uri -> JSON path: one sequential pass of 1 MiB writes at QD16, capped at BENCH_RUNTIME s
  run_fio_once "$1" w1m --rw=write --bs=1M --iodepth=16 --runtime="$RUNTIME"
}

w4k_complete() {  # json: true if the replay wrote every chunk
  [ "$(fio_value "$1" 'j.jobs[0].write.io_bytes')" = "$(((BYTES / CHUNK) * 4096))" ]
}

rec_w4k() {  # metric uri [server]: IOPS of one replay of the w4k log (first writes), and with a
  # server name its CPU per write (utime+stime, load-independent): cpu_METRIC in microseconds
  local j c0 c1 srv=${3:-}
  [ -z "$srv" ] || c0=$(cpu_seconds "${PID[$srv]}")
  j=$(fio_w4k "$2")
  [ -z "$srv" ] || c1=$(cpu_seconds "${PID[$srv]}")
  w4k_complete "$j" || log "warning: $CUR_SERVER $1: the replay stopped after ${FW_CAP}s before every chunk was written"
  record "$1" "$(fio_value "$j" 'j.jobs[0].write.iops')" IOPS hi -
  [ -z "$srv" ] || record "cpu_$1" "$(fio_value "$j" "($c1 - $c0) * 1e6 / Math.max(1, j.jobs[0].write.total_ios)")" us lo -
  W4K_LAST=$j
  settle
}

rec_w1m() {  # metric uri server: MiB/s of one sequential pass of 1 MiB writes (first writes), and
  # the server's CPU seconds per GiB written: cpu_METRIC
  local j c0 c1
  c0=$(cpu_seconds "${PID[$3]}")
  j=$(fio_w1m "$2")
  c1=$(cpu_seconds "${PID[$3]}")
  record "$1" "$(fio_value "$j" 'j.jobs[0].write.bw_bytes / 1048576')" MiB/s hi -
  record "cpu_$1" "$(fio_value "$j" "($c1 - $c0) * 1073741824 / Math.max(1, j.jobs[0].write.io_bytes)")" s/GiB lo -
  settle
}

rec_rw4k() {  # metric uri: random 4 KiB writes QD32, time based (plain writes, overwrites)
  record "$1" "$(fio_value "$(run_fio "$2" rw4k --rw=randwrite --bs=4k --iodepth=32)" 'j.jobs[0].write.iops')" \
    IOPS hi -
  settle
}

rec_sw1m() {  # metric uri: sequential 1 MiB writes QD16, time based (plain writes, overwrites)
  record "$1" "$(fio_value "$(run_fio "$2" sw1m --rw=write --bs=1M --iodepth=16)" 'j.jobs[0].write.bw_bytes / 1048576')" \
    MiB/s hi -
  settle
}

rec_r4k() {  # metric uri: random 4 KiB reads QD32, time based
  record "$1" "$(fio_value "$(run_fio "$2" r4k --rw=randread --bs=4k --iodepth=32)" 'j.jobs[0].read.iops')" IOPS hi -
}

rec_r1m() {  # metric uri: sequential 1 MiB reads QD16, time based
  record "$1" "$(fio_value "$(run_fio "$2" r1m --rw=read --bs=1M --iodepth=16)" 'j.jobs[0].read.bw_bytes / 1048576')" \
    MiB/s hi -
}

fill_rest() {  # uri: if the last w4k replay stopped early, copy every chunk with a full 1 MiB pass
  if ! w4k_complete "$W4K_LAST"; then
    log "$CUR_SERVER: filling the rest with a sequential pass (untimed)"
    run_fio_once "$1" fill --rw=write --bs=1M --iodepth=16 >/dev/null
    settle
  fi
}

# ------------------------------------------------------------------ the snapshot section
snapshot_nbdsnap() {
  local o h0 h1 n r
  CUR_SERVER=nbdsnap
  start_snapd snapd "$WORK/snapd-store.img"
  o=${URI[snapd]}/$EXPORT
  log "snapshot: nbdsnap (pid ${PID[snapd]}) $o"
  # untimed: warms the fresh process up and records every block in this change-tracking era, so
  # that "plain" is steady state
  fio_w4k "$o" >/dev/null
  settle
  rec_rw4k write_4k_plain "$o"
  rec_sw1m write_1M_plain "$o"
  snapcli snapd snapshot create "$EXPORT" s1
  h0=$(heap_used snapd)
  rec_r4k read_4k_origin "$o"
  rec_r1m read_1M_origin "$o"
  rec_r4k read_4k_snap_shared "$o@s1"
  rec_r1m read_1M_snap_shared "$o@s1"
  rec_w4k write_4k_first "$o" snapd
  fill_rest "$o"
  alive snapd
  # the store now holds a copy of every chunk of the device
  record peak_rss_full_store "$(hwm_mib "${PID[snapd]}")" MiB lo 'snap<150'
  h1=$(heap_used snapd)
  n=$(snap_chunks snapd s1)
  record copied_chunks "$n" chunks hi -
  record heap_per_copied_chunk "$(awk -v a="$h0" -v b="$h1" -v n="$n" 'BEGIN { if (n > 0 && a == a + 0 && b == b + 0) printf "%.1f\n", (b - a) / n; else print "NaN" }')" B lo -
  rec_rw4k write_4k_over "$o"
  rec_sw1m write_1M_over "$o"
  rec_r4k read_4k_snap_copied "$o@s1"
  rec_r1m read_1M_snap_copied "$o@s1"
  for r in $(seq 2 "$FW_ROUNDS"); do   # more first-write passes, each on a fresh snapshot
    snapcli snapd snapshot delete "$EXPORT@s$((r - 1))"
    snapcli snapd snapshot create "$EXPORT" "s$r"
    rec_w4k write_4k_first "$o" snapd
  done
  snapcli snapd snapshot delete "$EXPORT@s$FW_ROUNDS"
  snapcli snapd snapshot create "$EXPORT" s1M
  rec_w1m write_1M_first "$o" snapd
  # plain writes once more (no snapshot; every block recorded in the era first), so that the
  # reference is the median of a run before and a run after the snapshot workloads
  snapcli snapd snapshot delete "$EXPORT@s1M"
  fio_w4k "$o" >/dev/null
  settle
  rec_rw4k write_4k_plain "$o"
  rec_sw1m write_1M_plain "$o"
  alive snapd
  # and over the whole section (copied-chunk reads, overwrites and more first-write passes after it)
  record peak_rss_section "$(hwm_mib "${PID[snapd]}")" MiB lo -
  stop_server snapd
}

snapshot_overlay() {  # server (qcow2 | nbdkit-cow): the same workloads on a fresh overlay
  local s=$1 start u r
  case $s in qcow2) start=start_qcow2 ;; nbdkit-cow) start=start_nbdkit_cow ;; *) die "unknown server $s" ;; esac
  CUR_SERVER=$s
  "$start" "$s"
  u=${URI[$s]}
  log "snapshot: $s (pid ${PID[$s]}) $u"
  rec_r4k read_4k_snap_shared "$u"
  rec_r1m read_1M_snap_shared "$u"
  rec_w4k write_4k_first "$u" "$s"
  fill_rest "$u"
  alive "$s"
  record peak_rss_full_store "$(hwm_mib "${PID[$s]}")" MiB lo -
  rec_rw4k write_4k_over "$u"
  rec_sw1m write_1M_over "$u"
  rec_r4k read_4k_snap_copied "$u"
  rec_r1m read_1M_snap_copied "$u"
  alive "$s"
  stop_server "$s"
  for r in $(seq 2 "$FW_ROUNDS"); do   # more first-write passes, each on a fresh overlay
    "$start" "$s"
    rec_w4k write_4k_first "${URI[$s]}" "$s"
    alive "$s"
    stop_server "$s"
  done
  "$start" "$s"
  rec_w1m write_1M_first "${URI[$s]}" "$s"
  alive "$s"
  stop_server "$s"
}

section_snapshot() {
  local s
  for s in $SNAP_SERVERS; do
    case $s in
      nbdsnap) snapshot_nbdsnap ;;
      *) snapshot_overlay "$s" ;;
    esac
  done
}

ratios_snapshot() {
  local t=snapshot/nbdsnap
  ratio 'snapshot: first write 4K / plain write 4K' $t/write_4k_first $t/write_4k_plain 'ratio>=0.5'
  ratio 'snapshot: overwrite 4K / plain write 4K' $t/write_4k_over $t/write_4k_plain 'ratio>=0.9'
  ratio 'snapshot: first write 4K / qcow2 overlay (syncs nothing)' $t/write_4k_first snapshot/qcow2/write_4k_first 'ratio>=1.0'
  ratio 'snapshot: first write 4K, server CPU per write / qcow2' $t/cpu_write_4k_first snapshot/qcow2/cpu_write_4k_first -
  ratio 'snapshot: first write 1M / plain write 1M' $t/write_1M_first $t/write_1M_plain 'ratio>=0.5'
  ratio 'snapshot: first write 1M / qcow2 overlay' $t/write_1M_first snapshot/qcow2/write_1M_first -
  ratio 'snapshot: first write 1M, server CPU per GiB / qcow2' $t/cpu_write_1M_first snapshot/qcow2/cpu_write_1M_first -
  ratio 'snapshot: overwrite 1M / plain write 1M' $t/write_1M_over $t/write_1M_plain -
  ratio 'snapshot: read 4K, shared chunks / origin' $t/read_4k_snap_shared $t/read_4k_origin 'ratio>=0.9'
  ratio 'snapshot: read 4K, copied chunks / origin' $t/read_4k_snap_copied $t/read_4k_origin 'ratio>=0.9'
  ratio 'snapshot: read 1M, shared chunks / origin' $t/read_1M_snap_shared $t/read_1M_origin 'ratio>=0.9'
  ratio 'snapshot: read 1M, copied chunks / origin' $t/read_1M_snap_copied $t/read_1M_origin 'ratio>=0.9'
}
