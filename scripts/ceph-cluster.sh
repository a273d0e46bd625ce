#!/usr/bin/env bash
# ceph-cluster.sh: a throwaway single-node Ceph for the tests and the bench: one mon, one mgr, one
# bluestore OSD on a sparse file, radosgw (S3) and an RBD pool, all on 127.0.0.1, no systemd, no
# containers, no authentication (loopback only). About 20 s to start and about 0.5 GiB of memory.
#
#   ceph-cluster.sh start DIR        bootstrap into DIR (absent or empty); prints the environment as
#                                    `export` lines, also in DIR/env.sh and DIR/env.json
#   ceph-cluster.sh stop DIR         stop every process this script started for DIR (by the pid files
#                                    in DIR/run, and only if that pid still runs a Ceph or qemu-nbd
#                                    binary); keeps DIR. Safe to run twice, and after a failed start.
#   ceph-cluster.sh status DIR       one line per process: NAME PID running|dead, then `ceph health`
#   ceph-cluster.sh export DIR IMAGE [PORT]
#                                    serve POOL/IMAGE over NBD with qemu-nbd (qemu's rbd driver) on
#                                    127.0.0.1:PORT (free port if absent or 0); prints nbd://...;
#                                    pid in DIR/run/qemu-nbd.IMAGE.PORT.pid, stopped by `stop`
#
# Environment (defaults):
#   CEPH_MON_PORT=0  CEPH_RGW_PORT=0   0: a free port is chosen
#   CEPH_OSD_SIZE=10G                  the OSD's sparse block file (DIR/osd.0.block)
#   CEPH_POOL=rbd                      the RBD pool created at start
#   CEPH_S3_ACCESS_KEY / CEPH_S3_SECRET_KEY   the RGW user's keys (default: random)
#   CEPH_NICE=19                       nice level of every daemon (the machine is shared)
#   CEPH_TIMEOUT=120                   seconds per wait
#   CEPH_EXIT_WITH_PID=PID             also start a watcher that stops the cluster once PID is gone
#                                      (a test runner that dies does not leave daemons behind)
#
# Problems met on Debian 12 with Ceph 16 (pacific), and their fixes, all in ceph.conf below:
#   - with `auth none`, radosgw's mon client insists on `secure` mode and fails with -13 unless
#     `ms_mon_client_mode = crc secure`;
#   - the mgr's optional modules double its memory; the always-on ones must stay (HEALTH_ERR);
#   - bluestore makes osd_data/block a symlink to bluestore_block_path, which must therefore live
#     outside osd_data;
#   - curl 7.88 --aws-sigv4 does not send x-amz-content-sha256; RGW answers 403 without it.
set -uo pipefail

SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
log() { echo "[ceph-cluster $(date +%T)] $*" >&2; }
die() {
  log "ERROR: $*"
  local f
  for f in "${D:-/nonexistent}"/log/*.log "${D:-/nonexistent}"/log/*.out; do
    [ -s "$f" ] && { echo "== $f" >&2; tail -n 8 "$f" >&2; }
  done
  exit 1
}
wait_for() { # wait_for WHAT CMD...: retry CMD every 0.3 s until it succeeds or CEPH_TIMEOUT passes
  local what=$1 end=$((SECONDS + ${CEPH_TIMEOUT:-120}))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && die "timeout waiting for $what"
    sleep 0.3
  done
}
run() { nice -n "${CEPH_NICE:-19}" "$@"; }
free_port() { # a port the kernel hands out now; the daemon binds it a moment later
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
abs_dir() { mkdir -p "$1" && cd "$1" && pwd; }

cmd_start() {
  D=$(abs_dir "$1") || die "cannot create $1"
  [ -z "$(ls -A "$D")" ] || die "$D is not empty (stop the cluster in it and use a new folder)"
  local t0=$SECONDS mon_port=${CEPH_MON_PORT:-0} rgw_port=${CEPH_RGW_PORT:-0} pool=${CEPH_POOL:-rbd}
  [ "$mon_port" = 0 ] && mon_port=$(free_port)
  [ "$rgw_port" = 0 ] && rgw_port=$(free_port)
  local ak=${CEPH_S3_ACCESS_KEY:-$(head -c 10 /dev/urandom | od -An -tx1 | tr -d ' \n')}
  local sk=${CEPH_S3_SECRET_KEY:-$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')}
  local fsid osd_uuid block_size
  fsid=$(uuidgen) && osd_uuid=$(uuidgen) || die "uuidgen"
  block_size=$(numfmt --from=iec "${CEPH_OSD_SIZE:-10G}") || die "bad CEPH_OSD_SIZE"
  mkdir -p "$D"/{mon.a,mgr.x,osd.0,rgw.x,run,log,crash}
  cat >"$D/ceph.conf" <<EOF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc secure
client_mount_timeout = 30
run_dir = $D/run
admin_socket = $D/run/\$name.asok
crash_dir = $D/crash
pid_file = $D/run/\$name.pid
log_file = $D/log/\$name.log
mon_cluster_log_file = $D/log/cluster.\$channel.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_max_pg_per_osd = 1000
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
# An RBD image's exclusive lock held by a killed client (qemu-nbd after SIGKILL) is broken once its
# watch expires: 10 s here instead of 30, so a restarted qemu-nbd writes again sooner; watches are
# pinged every 2 s (objecter tick) to stay well inside that on a loaded machine.
osd_client_watch_timeout = 10
[client]
# clients (qemu-nbd, rbd, radosgw-admin) log into DIR/log, not /var/log/ceph
log_file = $D/log/\$name.\$pid.log
admin_socket =
objecter_tick_interval = 2
[mon]
mon_data = $D/mon.\$id
[mgr]
mgr_data = $D/mgr.\$id
mgr_disabled_modules = alerts,diskprediction_local,influx,insights,iostat,localpool,mirroring,nfs,osd_perf_query,osd_support,prometheus,restful,selftest,snap_schedule,stats,telegraf,test_orchestrator,zabbix
[osd]
osd_data = $D/osd.\$id
osd_objectstore = bluestore
bluestore_block_path = $D/osd.\$id.block
bluestore_block_size = $block_size
bluestore_block_create = true
bluestore_block_db_create = false
bluestore_block_wal_create = false
# a small, fixed cache: the machine is shared and the tests move little data
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
osd_memory_target = 939524096
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
[client.rgw.x]
rgw_data = $D/rgw.\$id
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port
rgw_thread_pool_size = 16
log_file = $D/log/\$name.log
admin_socket = $D/run/\$name.asok
EOF
  export CEPH_CONF=$D/ceph.conf
  if [ -n "${CEPH_EXIT_WITH_PID:-}" ]; then
    # the watcher: stops this cluster once the given process is gone (it leaves its own pid file)
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -f "$2/run/watch.pid" ]; do sleep 2; done
      [ -f "$2/run/watch.pid" ] && { rm -f "$2/run/watch.pid"; exec bash "$3" stop "$2"; }' \
      ceph-cluster-watch "$CEPH_EXIT_WITH_PID" "$D" "$SCRIPT" </dev/null >>"$D/log/watch.out" 2>&1 &
    echo $! >"$D/run/watch.pid"
  fi
  log "mon on 127.0.0.1:$mon_port"
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$D/monmap" >/dev/null || die monmaptool
  run ceph-mon --mkfs -i a --monmap "$D/monmap" || die "mon mkfs"
  run ceph-mon -i a || die "mon start"
  wait_for "mon quorum" timeout 10 ceph mon stat
  log "mgr"
  run ceph-mgr -i x || die "mgr start"
  log "osd (mkfs on a sparse ${CEPH_OSD_SIZE:-10G} file)"
  [ "$(ceph osd new "$osd_uuid")" = 0 ] || die "ceph osd new"
  run ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" >"$D/log/osd-mkfs.out" 2>&1 || die "osd mkfs"
  run ceph-osd -i 0 2>>"$D/log/osd-mkfs.out" || die "osd start"
  wait_for "osd up" bash -c 'ceph osd dump | grep -q "^osd.0 up "'
  log "pool $pool"
  ceph osd pool create "$pool" 8 8 >/dev/null 2>&1 || die "pool create"
  rbd pool init "$pool" || die "rbd pool init"
  log "radosgw on 127.0.0.1:$rgw_port"
  timeout 60 nice -n "${CEPH_NICE:-19}" radosgw -n client.rgw.x || die "radosgw start"
  wait_for "rgw http" curl -sf -m 2 "http://127.0.0.1:$rgw_port/"
  radosgw-admin user create --uid=test --display-name=test --access-key="$ak" --secret-key="$sk" \
    >"$D/log/user.json" 2>&1 || die "radosgw-admin user create"
  cat >"$D/env.sh" <<EOF
export CEPH_CONF=$D/ceph.conf CEPH_DIR=$D CEPH_POOL=$pool
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$rgw_port AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk
EOF
  cat >"$D/env.json" <<EOF
{"dir": "$D", "conf": "$D/ceph.conf", "pool": "$pool", "monPort": $mon_port, "rgwPort": $rgw_port,
 "s3": {"endpoint": "http://127.0.0.1:$rgw_port", "accessKey": "$ak", "secretKey": "$sk", "region": "us-east-1"}}
EOF
  log "ready in $((SECONDS - t0)) s"
  cat "$D/env.sh"
}

# The processes of DIR, by pid file: NAME PID (only those whose pid still runs what we started).
owned() {
  local f name pid cmd
  for f in "$D"/run/*.pid; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .pid)
    pid=$(cat "$f" 2>/dev/null) || continue
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || cmd=
    # guards against a reused pid: the process must still run the binary we started, on DIR
    # (its command line names DIR, or it inherited CEPH_CONF=DIR/ceph.conf from this script)
    if [[ "$cmd" =~ (ceph-mon|ceph-mgr|ceph-osd|radosgw|qemu-nbd|ceph-cluster-watch) ]] &&
      { [[ "$cmd" == *"$D"* ]] || grep -qzx "CEPH_CONF=$D/ceph.conf" "/proc/$pid/environ" 2>/dev/null; }; then
      echo "$name $pid"
    else
      echo "$name $pid dead"
    fi
  done
}

kill_names() { # kill_names NAME...: TERM those of DIR, wait up to 15 s, then KILL
  local name pid state pids=() end=$((SECONDS + 15)) want
  while read -r name pid state; do
    for want in "$@"; do
      [[ "$name" == $want ]] || continue
      rm -f "$D/run/$name.pid"
      [ -z "$state" ] && kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    done
  done < <(owned)
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      [ $SECONDS -ge $end ] && { log "pid $pid ignores TERM; KILL"; kill -KILL "$pid"; break; }
      sleep 0.1
    done
  done
}

cmd_stop() {
  D=$(cd "$1" 2>/dev/null && pwd) || die "no folder $1"
  # the watcher first (so it does not run a second stop), then the clients, the OSD before the mon
  # (an OSD whose mon is gone hangs about 5 s)
  kill_names watch
  kill_names 'qemu-nbd*' client.rgw.x
  kill_names mgr.x osd.0
  kill_names mon.a
  log "stopped $D"
}

cmd_status() {
  D=$(cd "$1" 2>/dev/null && pwd) || die "no folder $1"
  local name pid state
  while read -r name pid state; do echo "$name $pid ${state:-running}"; done < <(owned)
  local health
  health=$(CEPH_CONF=$D/ceph.conf timeout 10 ceph health 2>/dev/null) || health="unreachable"
  echo "health: $health"
}

cmd_export() {
  D=$(cd "$1" 2>/dev/null && pwd) || die "no folder $1"
  local image=$2 port=${3:-0} pool
  pool=$(sed -n 's/.*"pool": "\([^"]*\)".*/\1/p' "$D/env.json")
  [ "$port" = 0 ] && port=$(free_port)
  # writeback cache: qemu-nbd honours FLUSH and FUA from the client (rbd_cache flushes on them)
  CEPH_CONF=$D/ceph.conf run qemu-nbd -f raw --fork --pid-file="$D/run/qemu-nbd.$image.$port.pid" \
    -b 127.0.0.1 -p "$port" -t -e 16 --cache=writeback \
    "rbd:$pool/$image:conf=$D/ceph.conf" 2>>"$D/log/qemu-nbd.$image.$port.out" || die "qemu-nbd $pool/$image"
  echo "nbd://127.0.0.1:$port"
}

case "${1:-}" in
start | stop | status) [ $# -eq 2 ] || { echo "usage: $0 $1 DIR" >&2; exit 2; }; "cmd_$1" "$2" ;;
export) [ $# -ge 3 ] || { echo "usage: $0 export DIR IMAGE [PORT]" >&2; exit 2; }; cmd_export "$2" "$3" "${4:-0}" ;;
*) echo "usage: $0 start|stop|status DIR | export DIR IMAGE [PORT]" >&2; exit 2 ;;
esac
