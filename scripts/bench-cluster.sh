# shellcheck shell=bash
# bench-cluster.sh: sourced by scripts/bench.sh. The cluster section (issue 13). Not in the default
# list, as it starts a single-node Ceph (scripts/ceph-cluster.sh, about 30 s and 0.5 GiB):
# BENCH_SECTIONS=cluster.
#
#   - An RBD image of BENCH_SIZE, filled with the bench's random data, served by qemu-nbd (qemu's
#     rbd driver, cache=writeback). "qemu-nbd": fio's nbd engine talking to that qemu-nbd directly;
#     "nbdsnap": `nbdsnap serve bench=nbd://THAT-QEMU-NBD` with a local store and change tracking
#     (the default), no snapshot held, fio talking to nbdsnap. 1 MiB sequential QD16 and 4 KiB
#     random QD32 reads and writes, time based; both servers in turn, the order flipped every
#     repetition. Target: nbdsnap >= 0.8x of direct (the proxy's tax). cpu_s_per_GiB_*: CPU seconds
#     (utime+stime) of the server the client talks to, per GiB moved: load independent.
#   - A full `nbdsnap backup` of a snapshot of that device to S3 (radosgw, s3://bench/full.nbk) vs
#     to a local file: MiB/s of the device (target >= 0.8x), and the backup process's peak RSS
#     (GNU time's maximum resident set size), whatever the device size.
#
# The proxy section (end of this file) runs the same proxy rows against qemu-nbd or nbdkit on a
# local file, without Ceph (BENCH_SECTIONS=proxy).
#
# Environment: BENCH_CLUSTER_WORKLOADS="seqread seqwrite randread randwrite" (subset / order),
# BENCH_CLUSTER_BACKUPS=1 (0: no backup rows), and the CEPH_* knobs of scripts/ceph-cluster.sh.

CLUSTER_WORKLOADS=${BENCH_CLUSTER_WORKLOADS:-seqread seqwrite randread randwrite}
CEPH_SCRIPT=$ROOT/scripts/ceph-cluster.sh

cluster_fio() {  # server uri name metric unit target fio-args...: one time-based fio run, recorded
  local s=$1 uri=$2 name=$3 metric=$4 unit=$5 target=$6 j c0 c1 v moved side
  shift 6
  local peer=${BEHIND[$s]:-} p0 p1
  CUR_SERVER=$s CUR_WL=$name
  c0=$(cpu_seconds "${PID[$s]}")
  [ -z "$peer" ] || p0=$(cpu_seconds "${PID[$peer]}")
  j=$(run_fio "$uri" "$name" "$@")
  c1=$(cpu_seconds "${PID[$s]}")
  [ -z "$peer" ] || p1=$(cpu_seconds "${PID[$peer]}")
  case $name in *read*) side=read ;; *) side=write ;; esac
  if [ "$unit" = IOPS ]; then v=$(fio_value "$j" "j.jobs[0].$side.iops"); else v=$(fio_value "$j" "j.jobs[0].$side.bw_bytes / 1048576"); fi
  record "$metric" "$v" "$unit" hi "$target"
  moved=$(fio_value "$j" "j.jobs[0].$side.io_bytes / 1073741824")
  record "cpu_s_per_GiB_$name" "$(per_gib "$c0" "$c1" "$moved")" s lo -
  # the server behind the proxy, while the proxy is talked to: the chain's whole cost is both
  [ -z "$peer" ] || record "peer_cpu_s_per_GiB_$name" "$(per_gib "$p0" "$p1" "$moved")" s lo -
  kill -0 "${PID[$s]}" 2>/dev/null || die "$s died during $name"
}

per_gib() {  # cpu0 cpu1 GiB -> CPU seconds per GiB
  awk -v a="$1" -v b="$2" -v g="$3" 'BEGIN { if (g > 0) printf "%.2f\n", (b - a) / g; else print "NaN" }'
}

declare -A BEHIND  # BEHIND[proxy]=the server it forwards to (its CPU is recorded too)

cluster_workload() {  # workload server
  local uri=${URI[$2]}
  case $1 in
  seqread) cluster_fio "$2" "$uri" seqread fio_seqread_1M_qd16 MiB/s 'ratio>=0.8' --rw=read --bs=1M --iodepth=16 ;;
  seqwrite) cluster_fio "$2" "$uri" seqwrite fio_seqwrite_1M_qd16 MiB/s 'ratio>=0.8' --rw=write --bs=1M --iodepth=16 ;;
  randread) cluster_fio "$2" "$uri" randread fio_randread_4k_qd32 IOPS 'ratio>=0.8' --rw=randread --bs=4k --iodepth=32 ;;
  randwrite) cluster_fio "$2" "$uri" randwrite fio_randwrite_4k_qd32 IOPS 'ratio>=0.8' --rw=randwrite --bs=4k --iodepth=32 ;;
  *) die "unknown cluster workload $1" ;;
  esac
}

cluster_backup() {  # kind (s3|file) dest: a full backup of bench@B; MiB/s, peak RSS, CPU s per GiB
  local kind=$1 dest=$2 t0 t1 rss cpu
  CUR_SERVER=nbdsnap CUR_WL=backup_$kind
  t0=$(date +%s.%N)
  if ! /usr/bin/time -f '%M %U %S' -o "$WORK/backup-$kind.time" node "$ROOT/bin/nbdsnap.cjs" backup \
    "${URI[nbdsnap]}@B" "$dest" --progress none >"$WORK/backup-$kind.out" 2>&1; then
    cat "$WORK/backup-$kind.out" >&2
    record "backup_${kind}_MiBps" NaN MiB/s hi -
    return
  fi
  t1=$(date +%s.%N)
  record "backup_${kind}_MiBps" "$(awk -v s="$BYTES" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", s / 1048576 / (b - a) }')" MiB/s hi -
  read -r rss u sy <"$WORK/backup-$kind.time"
  record "backup_${kind}_peak_rss" "$(awk -v k="$rss" 'BEGIN { printf "%.1f\n", k / 1024 }')" MiB lo -
  cpu=$(awk -v u="$u" -v s="$sy" -v b="$BYTES" 'BEGIN { printf "%.2f\n", (u + s) / (b / 1073741824) }')
  record "backup_${kind}_cpu_s_per_GiB" "$cpu" s lo -
}

section_cluster() {
  local ports rep s order wl env_conf sec_rep f
  command -v ceph-mon >/dev/null || die "cluster section: ceph-mon not found (install ceph-mon ceph-mgr ceph-osd radosgw ceph-common qemu-block-extra)"
  [ -x /usr/bin/time ] || die "cluster section: /usr/bin/time (GNU time) not found"
  # not local: the EXIT trap below runs after this function has returned
  cdir=$WORK/ceph.$CUR_REP
  # this subshell's own cleanup: its servers (by pid), then the cluster (by its pid files) and its
  # folder (the OSD's file holds the image and the backups)
  trap 'for s in "${!PID[@]}"; do stop_server "$s"; done; bash "$CEPH_SCRIPT" stop "$cdir" >&2; rm -rf "$cdir"' EXIT
  log "cluster: starting a single-node Ceph in $cdir"
  CEPH_EXIT_WITH_PID=$BASHPID bash "$CEPH_SCRIPT" start "$cdir" >/dev/null 2>"$WORK/ceph-start.log" ||
    { cat "$WORK/ceph-start.log" >&2; die "cluster: ceph-cluster.sh start failed"; }
  # shellcheck disable=SC1091
  . "$cdir/env.sh"
  env_conf=$CEPH_CONF
  rbd create --size "$((BYTES / 1048576))M" "$CEPH_POOL/bench" || die "rbd create"
  read -r -a ports <<<"$(free_ports 2)"
  URI[qemu-nbd]=$(bash "$CEPH_SCRIPT" export "$cdir" bench "${ports[0]}") || die "qemu-nbd"
  PID[qemu-nbd]=$(cat "$cdir/run/qemu-nbd.bench.${ports[0]}.pid")
  log "cluster: filling the RBD image ($SIZE) through qemu-nbd"
  nbdcopy --flush "$SRC" "${URI[qemu-nbd]}" || die "filling the RBD image"
  truncate -s "$((BYTES / 4))" "$WORK/cluster-store.img"
  start_nbdsnap_as nbdsnap "${ports[1]}" "$EXPORT=${URI[qemu-nbd]}" --store "$WORK/cluster-store.img" \
    --control "$WORK/cluster.ctl"
  URI[nbdsnap]=${URI[nbdsnap]}/$EXPORT
  log "cluster: qemu-nbd pid ${PID[qemu-nbd]} ${URI[qemu-nbd]}; nbdsnap pid ${PID[nbdsnap]} ${URI[nbdsnap]} (ceph conf $env_conf)"

  # run_section runs this section BENCH_SECTION_REPEAT times (a new cluster each time, CUR_REP
  # set); inside, BENCH_REPEAT repetitions of each fio workload, and one backup of each kind
  sec_rep=$CUR_REP
  order=(nbdsnap qemu-nbd)
  for rep in $(seq 1 "$REPEAT"); do
    CUR_REP=$sec_rep.$rep
    for wl in $CLUSTER_WORKLOADS; do
      for s in "${order[@]}"; do
        log "cluster: rep $rep/$REPEAT  $wl  $s"
        cluster_workload "$wl" "$s"
      done
    done
    order=("${order[1]}" "${order[0]}")
  done
  CUR_REP=$sec_rep CUR_WL=server
  for s in nbdsnap qemu-nbd; do
    CUR_SERVER=$s
    record peak_rss_VmHWM "$(hwm_mib "${PID[$s]}")" MiB lo -
  done
  for f in "$cdir"/run/{mon.a,mgr.x,osd.0,client.rgw.x}.pid; do
    log "cluster: $(basename "$f" .pid) peak RSS $(hwm_mib "$(cat "$f")") MiB"
  done

  if [ "${BENCH_CLUSTER_BACKUPS:-1}" = 1 ]; then
    node "$ROOT/bin/nbdsnap.cjs" snapshot create "$EXPORT" B --control "$WORK/cluster.ctl" >/dev/null || die "snapshot"
    curl -sf --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
      -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -X PUT "$AWS_ENDPOINT_URL_S3/bench" || die "bucket"
    CUR_REP=$sec_rep
    # which goes first alternates with the section's repetition; each backup to a new name
    if [ $((sec_rep % 2)) = 1 ]; then
      cluster_backup file "$WORK/full-$sec_rep.nbk"
      cluster_backup s3 "s3://bench/full-$sec_rep.nbk"
    else
      cluster_backup s3 "s3://bench/full-$sec_rep.nbk"
      cluster_backup file "$WORK/full-$sec_rep.nbk"
    fi
    rm -f "$WORK/full-$sec_rep.nbk"
  fi
}

ratios_cluster() {
  local t=cluster/nbdsnap
  ratio 'cluster: full backup to S3 (radosgw) / to a local file, MiB/s' $t/backup_s3_MiBps $t/backup_file_MiBps 'ratio>=0.8'
  ratio 'cluster: backup peak RSS, to S3 / to a local file' $t/backup_s3_peak_rss $t/backup_file_peak_rss -
}

# ------------------------------------------------------------------ proxy: the cluster rows without Ceph
# BENCH_SECTIONS=proxy: the same comparison as the cluster section, with the remote on a local file:
# qemu-nbd (raw, cache=writeback, -e 16; BENCH_PROXY_PEER=nbdkit: `nbdkit file`) serving a copy of
# the bench image on a Unix socket, and `nbdsnap serve bench=nbd+unix:///bench?socket=...` in front
# of it (local store, change tracking) on another Unix socket, both servers in turn (the clients
# reach both over a Unix socket; the image is synced after every write run, untimed, so that the
# dirty pages a direct run leaves are not written back by the next proxied run's flushes).
# Workloads: BENCH_PROXY_WORKLOADS
# (default "nbdcopy_read nbdcopy_write seqread seqwrite randread randwrite"). Besides throughput,
# cpu_s_per_GiB_* of the server talked to: the proxy's own cost per GiB, whatever the load.
PROXY_PEER=${BENCH_PROXY_PEER:-qemu-nbd}
PROXY_WORKLOADS=${BENCH_PROXY_WORKLOADS:-nbdcopy_read nbdcopy_write seqread seqwrite randread randwrite}

proxy_nbdcopy() {  # server uri name: a whole-export nbdcopy (read to null:, or write from SRC)
  local s=$1 uri=$2 name=$3 c0 c1 v peer=${BEHIND[$1]:-} p0 p1 gib
  CUR_SERVER=$s CUR_WL=$name
  gib=$(awk -v g="$BYTES" 'BEGIN { print g / 1073741824 }')
  c0=$(cpu_seconds "${PID[$s]}")
  [ -z "$peer" ] || p0=$(cpu_seconds "${PID[$peer]}")
  if [ "$name" = nbdcopy_read ]; then v=$(timed_nbdcopy "$uri" null:); else v=$(timed_nbdcopy "$SRC" "$uri"); fi
  c1=$(cpu_seconds "${PID[$s]}")
  [ -z "$peer" ] || p1=$(cpu_seconds "${PID[$peer]}")
  record "$name" "$v" MiB/s hi 'ratio>=0.8'
  record "cpu_s_per_GiB_$name" "$(per_gib "$c0" "$c1" "$gib")" s lo -
  [ -z "$peer" ] || record "peer_cpu_s_per_GiB_$name" "$(per_gib "$p0" "$p1" "$gib")" s lo -
  kill -0 "${PID[$s]}" 2>/dev/null || die "$s died during $name"
}

proxy_settle() {  # after a write workload (untimed): the peer's image written back to the disk, so
  # that the dirty pages a run leaves (direct runs flush nothing) are not charged to the next run's
  # flushes (the proxy flushes every few tens of MiB: its replay log's guarantee)
  sync "$WORK/proxy.raw"
}

section_proxy() {
  local sock=$WORK/proxy-peer.sock port rep s wl order
  cp --sparse=never "$SRC" "$WORK/proxy.raw"
  sync "$WORK/proxy.raw" # not left dirty for the first run's flushes to write back
  rm -f "$sock" "$WORK/proxy-peer.pid"
  case $PROXY_PEER in
  qemu-nbd)
    qemu-nbd -f raw -x "$EXPORT" -k "$sock" -t -e 16 --cache=writeback --pid-file="$WORK/proxy-peer.pid" \
      "$WORK/proxy.raw" >"$WORK/proxy-peer.log" 2>&1 &
    ;;
  nbdkit)
    nbdkit -f --exit-with-parent -U "$sock" -P "$WORK/proxy-peer.pid" -e "$EXPORT" \
      file "file=$WORK/proxy.raw" >"$WORK/proxy-peer.log" 2>&1 &
    ;;
  *) die "BENCH_PROXY_PEER: qemu-nbd or nbdkit, not $PROXY_PEER" ;;
  esac
  PID[$PROXY_PEER]=$!
  wait_pidfile proxy-peer "$WORK/proxy-peer.pid" "${PID[$PROXY_PEER]}"
  PID[$PROXY_PEER]=$(cat "$WORK/proxy-peer.pid")
  URI[$PROXY_PEER]="nbd+unix:///$EXPORT?socket=$sock"
  truncate -s "$((BYTES / 4))" "$WORK/proxy-store.img"
  port=$(free_ports 1)
  rm -f "$WORK/proxy-nbdsnap.sock"
  start_nbdsnap_as nbdsnap "$port" "$EXPORT=${URI[$PROXY_PEER]}" --store "$WORK/proxy-store.img" -k "$WORK/proxy-nbdsnap.sock"
  # The clients reach both servers the same way, over a Unix socket (over TCP, loopback's
  # protocol work for the payloads counted in nbdsnap's CPU, 0.6-1.2 s/GiB more, measured)
  URI[nbdsnap]="nbd+unix:///$EXPORT?socket=$WORK/proxy-nbdsnap.sock"
  BEHIND[nbdsnap]=$PROXY_PEER
  log "proxy: $PROXY_PEER pid ${PID[$PROXY_PEER]} ${URI[$PROXY_PEER]}; nbdsnap pid ${PID[nbdsnap]} ${URI[nbdsnap]}"
  order=(nbdsnap "$PROXY_PEER")
  for rep in $(seq 1 "$REPEAT"); do
    CUR_REP=$rep
    for wl in $PROXY_WORKLOADS; do
      for s in "${order[@]}"; do
        log "proxy: rep $rep/$REPEAT  $wl  $s"
        case $wl in
        nbdcopy_*) proxy_nbdcopy "$s" "${URI[$s]}" "$wl" ;;
        *) cluster_workload "$wl" "$s" ;;
        esac
        case $wl in *write*) proxy_settle ;; esac
      done
    done
    order=("${order[1]}" "${order[0]}")
  done
  CUR_REP=0 CUR_WL=server
  for s in nbdsnap "$PROXY_PEER"; do
    CUR_SERVER=$s
    record peak_rss_VmHWM "$(hwm_mib "${PID[$s]}")" MiB lo -
  done
  # nbdsnap first: stopped after its peer, it would wait for the remote (up to --remote-timeout)
  # to flush at shutdown
  stop_server nbdsnap
  stop_server "$PROXY_PEER"
  BEHIND[nbdsnap]=
}
