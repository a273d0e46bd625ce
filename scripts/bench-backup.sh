# shellcheck shell=bash
# bench-backup.sh: sourced by scripts/bench.sh. The backup section (issue 6): an incremental
# backup of the device after BENCH_BACKUP_PCT % of its 64 KiB blocks changed (scattered writes),
# against a full nbdcopy of the same snapshot to a file — time, bytes read (the server's socket
# writes), bytes written and CPU seconds of client and server, BENCH_BACKUP_ROUNDS rounds in turn;
# a full `nbdsnap backup` against the same nbdcopy; the CLI's start-up alone (`backup --help`); and the cost of crash-safe change tracking on
# 4 KiB writes in a fresh era (--cbt-block-size 64K, the default, vs 0).

BACKUP_PCT=${BENCH_BACKUP_PCT:-5}
CBT_ROUNDS=${BENCH_CBT_ROUNDS:-3}
BACKUP_ROUNDS=${BENCH_BACKUP_ROUNDS:-2}   # rounds of (incremental, nbdcopy, full backup), in turn

io_wchar() {  # pid -> bytes the process has written (files and sockets)
  awk '/^wchar:/ { print $2 }' "/proc/$1/io" 2>/dev/null
}

timed_run() {  # command... -> seconds (its output goes to $WORK/timed.out)
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$WORK/timed.out" 2>&1 || { cat "$WORK/timed.out" >&2; echo NaN; return; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

mib_of() { awk -v b="$1" 'BEGIN { printf "%.1f\n", b / 1048576 }'; }

backup_measure() {  # name prefix command...: time, MiB the server sent, MiB of the file ($WORK/$prefix.out)
  # and the CPU seconds of the client (user+sys, its threads included) and of the server
  local name=$1 prefix=$2 w0 w1 secs c0 c1
  shift 2
  w0=$(io_wchar "${PID[$name]}")
  c0=$(cpu_seconds "${PID[$name]}")
  secs=$(timed_run /usr/bin/time -f '%U %S' -o "$WORK/$prefix.cpu" "$@")
  c1=$(cpu_seconds "${PID[$name]}")
  w1=$(io_wchar "${PID[$name]}")
  record "${prefix}_seconds" "$secs" s lo -
  record "${prefix}_client_cpu" "$(awk '{ printf "%.2f\n", $1 + $2 }' "$WORK/$prefix.cpu" 2>/dev/null)" s lo -
  record "${prefix}_server_cpu" "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f\n", b - a }')" s lo -
  record "${prefix}_read" "$(mib_of $((w1 - w0)))" MiB lo -
  record "${prefix}_written" "$(mib_of "$(stat -c %s "$WORK/$prefix.out" 2>/dev/null || echo 0)")" MiB lo -
  rm -f "$WORK/$prefix.out"
  settle
}

section_backup() {
  local cbt o n r
  CUR_SERVER=nbdsnap
  # change tracking: a snapshot taken and deleted starts a fresh era without copies; then one
  # 4 KiB write to every 64 KiB block, so that every write is its block's first in the era. The
  # image is locked by the server that serves it, so the two settings run one after the other
  # (own stores), a warm-up and CBT_ROUNDS passes each; the 64K server stays up for the backups.
  for cbt in 0 64K; do
    start_snapd "cbt$cbt" "$WORK/cbt$cbt-store.img" --cbt-block-size "$cbt"
    log "backup: nbdsnap --cbt-block-size $cbt (pid ${PID[cbt$cbt]})"
    if [ "$CBT_ROUNDS" -gt 0 ]; then
      fio_w4k "${URI[cbt$cbt]}/$EXPORT" >/dev/null   # untimed warm-up of the fresh process (JIT)
      settle
    fi
    for r in $(seq 1 "$CBT_ROUNDS"); do
      snapcli "cbt$cbt" snapshot create "$EXPORT" "era$r"
      snapcli "cbt$cbt" snapshot delete "$EXPORT@era$r"
      rec_w4k "write_4k_fresh_era_cbt$cbt" "${URI[cbt$cbt]}/$EXPORT"
    done
    alive "cbt$cbt"
    if [ "$cbt" = 0 ]; then stop_server cbt0; fi
  done
  o=${URI[cbt64K]}/$EXPORT

  # the backups, on the server with change tracking
  snapcli cbt64K snapshot create "$EXPORT" A
  n=$((BYTES / 65536 * BACKUP_PCT / 100))
  run_fio_once "$o" bchange --rw=randwrite --bs=64k --iodepth=16 --number_ios="$n" >/dev/null
  settle
  snapcli cbt64K snapshot create "$EXPORT" B
  record changed_by_cbt "$(node "$ROOT/bin/nbdsnap.cjs" cbt "$EXPORT@A" "$EXPORT@B" --json --control "${CTL[cbt64K]}" |
    node -e 'console.log((JSON.parse(require("fs").readFileSync(0, "utf8")).changedBytes / 1048576).toFixed(1))')" MiB lo -
  for r in $(seq 1 "$BACKUP_ROUNDS"); do
    backup_measure cbt64K incremental node "$ROOT/bin/nbdsnap.cjs" backup "$o@B" "$WORK/incremental.out" --since A --progress none
    # the CLI's start-up alone (node, the bundle, the command's modules), part of every backup's time
    record backup_startup_seconds "$(timed_run node "$ROOT/bin/nbdsnap.cjs" backup --help)" s lo -
    backup_measure cbt64K full_nbdcopy nbdcopy "$o@B" "$WORK/full_nbdcopy.out"
    if [ "${BENCH_BACKUP_FULL:-1}" = 1 ]; then
      backup_measure cbt64K full_backup node "$ROOT/bin/nbdsnap.cjs" backup "$o@B" "$WORK/full_backup.out" --progress none
    fi
  done
  alive cbt64K
  stop_server cbt64K
}

ratios_backup() {
  local t=backup/nbdsnap
  ratio 'backup: full nbdsnap backup / nbdcopy to a file, speed' $t/full_nbdcopy_seconds $t/full_backup_seconds 'ratio>=0.9'
  ratio 'backup: full nbdsnap backup / nbdcopy, client CPU s' $t/full_backup_client_cpu $t/full_nbdcopy_client_cpu -
  ratio 'backup: full nbdsnap backup / nbdcopy, server CPU s' $t/full_backup_server_cpu $t/full_nbdcopy_server_cpu -
  ratio "backup: incremental (${BACKUP_PCT}% changed) / full nbdcopy, time" $t/incremental_seconds $t/full_nbdcopy_seconds 'ratio<=0.1'
  ratio "backup: incremental (${BACKUP_PCT}% changed) / full nbdsnap backup, time" $t/incremental_seconds $t/full_backup_seconds -
  ratio 'backup: CLI start-up (backup --help) / incremental, time' $t/backup_startup_seconds $t/incremental_seconds -
  ratio 'backup: incremental / full nbdcopy, bytes read' $t/incremental_read $t/full_nbdcopy_read -
  ratio 'backup: incremental / full nbdcopy, bytes written' $t/incremental_written $t/full_nbdcopy_written -
  ratio 'cbt: 4K first-write-in-era IOPS, cbt 64K / cbt 0' $t/write_4k_fresh_era_cbt64K $t/write_4k_fresh_era_cbt0 -
}
