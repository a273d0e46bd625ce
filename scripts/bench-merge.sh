# shellcheck shell=bash
# bench-merge.sh: sourced by scripts/bench.sh. The merge section (issue 5): merging N MiB of
# changed chunks back into the origin (`merge DEV@SNAP`, timed through the control socket by
# scripts/bench-ctl.mjs, since `merge --wait` polls only once a second) against nbdcopy of the
# same N MiB between two plain exports of the same server (with and without --flush: the merge
# makes every run durable before recording it, so --flush is the fair peer); and the origin's
# 4 KiB random-read IOPS while a merge runs against idle, unlimited and with the merge rate
# limit (`merge --speed`, BENCH_MERGE_SPEED).

MERGE_SIZE=${BENCH_MERGE_SIZE:-256M}
MERGE_SPEED=${BENCH_MERGE_SPEED:-32M}

merge_prepare() {  # name snap: take SNAP, then change the first MERGE_BYTES of the origin (untimed)
  snapcli "$1" snapshot create "$EXPORT" "$2"
  run_fio_once "${URI[$1]}/$EXPORT" mprep --rw=write --bs=1M --iodepth=16 --size="$MERGE_BYTES" >/dev/null
  settle
}

merge_timed() {  # name snap [speed-bytes] -> {"start", "end" (epoch ms), "seconds", "chunks", "bytes"}, or {} if it failed
  if ! node "$ROOT/scripts/bench-ctl.mjs" merge "${CTL[$1]}" "$EXPORT" "$2" 10 ${3:+"$3"} 2>"$WORK/merge.err"; then
    log "warning: merge of $EXPORT@$2 failed: $(cat "$WORK/merge.err")"
    node "$ROOT/bin/nbdsnap.cjs" snapshot delete "$EXPORT@$2" --control "${CTL[$1]}" >/dev/null 2>&1
    echo '{}'
  fi
}

json_field() {  # json-text field -> value, or NaN
  node -e 'console.log(JSON.parse(process.argv[1])[process.argv[2]] ?? "NaN")' "$1" "$2"
}

merge_rate() {  # merge_timed-json -> MiB/s
  awk -v b="$(json_field "$1" bytes)" -v s="$(json_field "$1" seconds)" \
    'BEGIN { if (s > 0) printf "%.1f\n", b / 1048576 / s; else print "NaN" }'
}

timed_copy() {  # bytes nbdcopy-args... -> MiB/s, or NaN
  local bytes=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  if ! nbdcopy "$@" 2>"$WORK/nbdcopy.err"; then
    cat "$WORK/nbdcopy.err" >&2
    echo NaN
    return
  fi
  t1=$(date +%s.%N)
  awk -v s="$bytes" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", s / 1048576 / (b - a) }'
}

iops_in_window() {  # fio-iops-log start-ms end-ms: mean IOPS of the samples inside [start, end]
  node -e '
    const [path, start, end] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
    const fs = require("fs");
    // log_avg_msec=100, log_unix_epoch=1: "time_ms, iops averaged over the 100 ms before, ddir, bs, ..."
    const v = fs.readFileSync(path, "utf8").trim().split("\n").map((l) => l.split(",").map(Number))
      .filter(([t]) => t - 100 >= start && t <= end).map(([, x]) => x);
    console.log(v.length === 0 ? "NaN" : (v.reduce((a, b) => a + b, 0) / v.length).toFixed(0));
  ' "$1" "$2" "$3"
}

merge_under_reads() {  # snap origin-uri speed-bytes|'': fio 4K random reads during the merge; sets j
  local fpid
  rm -f "$WORK"/mread_iops.*.log
  fio --name=mread --ioengine=nbd --uri="$2" --rw=randread --bs=4k --iodepth=32 --time_based --runtime=600 \
    --write_iops_log="$WORK/mread" --log_avg_msec=100 --log_unix_epoch=1 --output-format=json \
    >"$WORK/mread.out" 2>&1 &
  fpid=$!
  sleep "$(awk -v r="$RAMP" 'BEGIN { print r + 0.5 }')"
  j=$(merge_timed merged "$1" "$3")
  kill -INT "$fpid" 2>/dev/null
  wait "$fpid"
}

section_merge() {
  local u o j mib
  CUR_SERVER=nbdsnap
  MERGE_BYTES=$(numfmt --from=iec "$MERGE_SIZE") || die "bad BENCH_MERGE_SIZE $MERGE_SIZE"
  [ "$MERGE_BYTES" -le "$BYTES" ] || die "BENCH_MERGE_SIZE is larger than the image"
  mib=$((MERGE_BYTES / 1048576))
  # the two plain exports: random data, fully allocated, in the page cache
  head -c "$MERGE_BYTES" "$SRC" >"$WORK/msrc.raw"
  cp --sparse=never "$WORK/msrc.raw" "$WORK/mdst.raw"
  start_snapd merged "$WORK/merged-store.img" "msrc=$WORK/msrc.raw" "mdst=$WORK/mdst.raw"
  u=${URI[merged]}
  o=$u/$EXPORT
  log "merge: nbdsnap (pid ${PID[merged]}) $u, $mib MiB"
  settle

  merge_prepare merged m1
  j=$(merge_timed merged m1)
  record "merge_${mib}MiB" "$(merge_rate "$j")" MiB/s hi -
  record merge_seconds "$(json_field "$j" seconds)" s lo -
  settle
  # untimed: the first copy also records every block of mdst in this change-tracking era (as the
  # merge's blocks are, by merge_prepare), so the timed copies are steady state like the merge
  timed_copy "$MERGE_BYTES" "$u/msrc" "$u/mdst" >/dev/null
  settle
  record "nbdcopy_${mib}MiB" "$(timed_copy "$MERGE_BYTES" "$u/msrc" "$u/mdst")" MiB/s hi -
  settle
  record "nbdcopy_flush_${mib}MiB" "$(timed_copy "$MERGE_BYTES" --flush "$u/msrc" "$u/mdst")" MiB/s hi -
  settle

  merge_prepare merged m2
  rec_r4k read_4k_idle "$o"
  merge_under_reads m2 "$o" ''
  record read_4k_during_merge "$(iops_in_window "$WORK/mread_iops.1.log" "$(json_field "$j" start)" "$(json_field "$j" end)")" IOPS hi -
  record "merge_${mib}MiB_under_reads" "$(merge_rate "$j")" MiB/s hi -
  settle

  merge_prepare merged m3
  merge_under_reads m3 "$o" "$(numfmt --from=iec "$MERGE_SPEED")"
  record read_4k_during_merge_limited "$(iops_in_window "$WORK/mread_iops.1.log" "$(json_field "$j" start)" "$(json_field "$j" end)")" IOPS hi -
  record "merge_${mib}MiB_limited" "$(merge_rate "$j")" MiB/s hi -
  alive merged
  stop_server merged
  settle
}

ratios_merge() {
  local t=merge/nbdsnap mib=$(($(numfmt --from=iec "$MERGE_SIZE") / 1048576))
  ratio "merge: merge ${mib} MiB / nbdcopy ${mib} MiB (MiB/s)" "$t/merge_${mib}MiB" "$t/nbdcopy_${mib}MiB" -
  ratio "merge: merge ${mib} MiB / nbdcopy --flush (MiB/s)" "$t/merge_${mib}MiB" "$t/nbdcopy_flush_${mib}MiB" 'ratio>=0.8'
  ratio 'merge: origin read 4K during merge (no limit) / idle' $t/read_4k_during_merge $t/read_4k_idle -
  ratio "merge: origin read 4K during merge --speed $MERGE_SPEED / idle" $t/read_4k_during_merge_limited $t/read_4k_idle 'ratio>=0.7'
}
