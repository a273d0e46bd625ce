# shellcheck shell=bash
# bench-abuse.sh: sourced by scripts/bench.sh. The abuse section (issue 11, "bounded under careless
# and hostile clients"): against each server in turn (nbdsnap with its default limits, `nbdkit
# file`, qemu-nbd on the raw image), on the same image, scripts/abuse-clients.mjs opens
#   24 clients that send a 32 MiB WRITE header and 31 MiB of its payload, then stall;
#   16 clients that send four 32 MiB READs and never read a reply;
#   1000 sockets that never finish the handshake;
# holds them BENCH_ABUSE_HOLD seconds, then times a good client meanwhile (nbdcopy writes a 16 MiB
# file into the export, then reads the whole export to null:), the same copies as timed on the
# idle server first. Recorded per server: peak RSS (VmHWM of the server process, its whole life:
# target nbdsnap < 300 MiB), the good client's seconds idle and under attack (0 if it failed or
# took over BENCH_ABUSE_CLIENT_CAP s: "served" says which), and how many hostile sockets the
# server closed. Not in the default list (about 30 s per server): BENCH_SECTIONS=abuse.
#
#   BENCH_ABUSE_SERVERS="nbdsnap nbdkit qemu-nbd"
#   BENCH_ABUSE_WRITE=24 BENCH_ABUSE_READ=16 BENCH_ABUSE_HANDSHAKE=1000   hostile clients
#   BENCH_ABUSE_HOLD=10          seconds the hostile clients are held before the good client runs
#   BENCH_ABUSE_CLIENT_CAP=120   seconds a good client's copy may take before it counts as not served

ABUSE_SERVERS=${BENCH_ABUSE_SERVERS:-nbdsnap nbdkit qemu-nbd}
ABUSE_WRITE=${BENCH_ABUSE_WRITE:-24}
ABUSE_READ=${BENCH_ABUSE_READ:-16}
ABUSE_HANDSHAKE=${BENCH_ABUSE_HANDSHAKE:-1000}
ABUSE_HOLD=${BENCH_ABUSE_HOLD:-10}
ABUSE_CLIENT_CAP=${BENCH_ABUSE_CLIENT_CAP:-120}

start_abuse_server() {  # server port: PID[abuse-SERVER], URI[abuse-SERVER] (export "bench" or any)
  local s=$1 port=$2 name=abuse-$1
  rm -f "$WORK/$name.pid"
  case $s in
    nbdsnap)
      start_nbdsnap_as "$name" "$port" "$EXPORT=$IMG"
      URI[$name]=nbd://127.0.0.1:$port/$EXPORT
      return ;;
    nbdkit)
      nbdkit -f --exit-with-parent -P "$WORK/$name.pid" -i 127.0.0.1 -p "$port" file "file=$IMG" \
        >"$WORK/$name.log" 2>&1 & ;;
    qemu-nbd)
      # --shared=0: any number of clients (its default, 1, would queue every other client)
      qemu-nbd --persistent --shared=0 -f raw -x "$EXPORT" -b 127.0.0.1 -p "$port" \
        --pid-file "$WORK/$name.pid" "$IMG" >"$WORK/$name.log" 2>&1 & ;;
    *) die "unknown abuse server $s" ;;
  esac
  PID[$name]=$!
  wait_pidfile "$name" "$WORK/$name.pid" "${PID[$name]}"
  PID[$name]=$(cat "$WORK/$name.pid")
  URI[$name]=nbd://127.0.0.1:$port/$EXPORT
}

abuse_good() {  # uri label: the good client's write then read; records seconds (0: not served)
  local uri=$1 label=$2 t0 t1 ok=1
  t0=$(date +%s.%N)
  timeout "$ABUSE_CLIENT_CAP" nbdcopy "$WORK/abuse-16m.raw" "$uri" 2>>"$WORK/abuse-good.log" || ok=0
  t1=$(date +%s.%N)
  record "good_write_16M_s:$label" "$([ $ok = 1 ] && awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }' || echo 0)" s lo -
  record "served_write:$label" "$ok" bool hi -
  ok=1
  t0=$(date +%s.%N)
  timeout "$ABUSE_CLIENT_CAP" nbdcopy "$uri" null: 2>>"$WORK/abuse-good.log" || ok=0
  t1=$(date +%s.%N)
  record "good_read_all_s:$label" "$([ $ok = 1 ] && awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }' || echo 0)" s lo -
  record "served_read:$label" "$ok" bool hi -
}

abuse_one() {  # server
  local s=$1 name=abuse-$1 port hp status
  port=$(free_ports 1)
  CUR_SERVER=$s CUR_WL=abuse
  start_abuse_server "$s" "$port"
  log "abuse: $s on ${URI[$name]}, idle run of the good client"
  abuse_good "${URI[$name]}" idle
  record peak_rss_idle_VmHWM "$(hwm_mib "${PID[$name]}")" MiB lo -
  log "abuse: $s: $ABUSE_WRITE WRITE stallers, $ABUSE_READ READ hogs, $ABUSE_HANDSHAKE idle handshakes"
  node "$ROOT/scripts/abuse-clients.mjs" --port "$port" --export "$EXPORT" --write-stall "$ABUSE_WRITE" \
    --read-unread "$ABUSE_READ" --handshake "$ABUSE_HANDSHAKE" >"$WORK/$name.clients" 2>&1 &
  hp=$!
  for _ in $(seq 1 600); do grep -q '"ready":true' "$WORK/$name.clients" && break; kill -0 "$hp" 2>/dev/null || break; sleep 0.1; done
  sleep "$ABUSE_HOLD"
  log "abuse: $s: RSS $(awk '/^VmRSS:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/${PID[$name]}/status") with the hostile clients; good client runs"
  abuse_good "${URI[$name]}" attacked
  record peak_rss_VmHWM "$(hwm_mib "${PID[$name]}")" MiB lo 'snap<300'
  kill -TERM "$hp" 2>/dev/null
  wait "$hp" 2>/dev/null
  status=$(grep '"final":true' "$WORK/$name.clients" | tail -1)
  [ -n "$status" ] || status=$(tail -1 "$WORK/$name.clients")
  log "abuse: $s: hostile clients at the end: $status"
  record "hostile_closed_by_server" "$(node -e 'const s = JSON.parse(process.argv[1]); console.log(s.closed.write + s.closed.read + s.closed.handshake)' "$status" 2>/dev/null || echo -)" sockets - -
  stop_server "$name"
}

section_abuse() {
  local s
  command -v nbdcopy >/dev/null || { log "abuse: nbdcopy not found"; return 1; }
  head -c $((16 * 1048576)) /dev/urandom >"$WORK/abuse-16m.raw"
  for s in $ABUSE_SERVERS; do abuse_one "$s"; done
}
