# shellcheck shell=bash
# bench-tls.sh: sourced by scripts/bench.sh. The tls section (issue 12): nbdcopy read (to null:)
# and write (from the random source file) of the whole image over TLS, nbdsnap
# `--tls-certificates=DIR` against `nbdkit --tls-certificates=DIR file`, the same image and the
# same certificates (made here with certtool), both servers up for the whole section, in turn
# (the order flips every repetition). Target: nbdsnap >= 0.8x of nbdkit over TLS.
# Both servers run --tls=on, so the same copies also run in plaintext (BENCH_TLS_PLAIN=1): what
# TLS itself costs each server. Each copy also records the server's CPU seconds.
#
#   BENCH_TLS_REPEAT=3   repetitions of each copy per server (median reported)
#   BENCH_TLS_PLAIN=1    also the plaintext copies (0: TLS only)

TLS_REPEAT=${BENCH_TLS_REPEAT:-3}
TLS_PLAIN=${BENCH_TLS_PLAIN:-1}

tls_creds() {  # dir: ca-cert.pem, server-cert.pem, server-key.pem in DIR/server; ca-cert.pem in DIR/client
  local d=$1
  mkdir -p "$d/server" "$d/client" || return 1
  printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 2\n' >"$d/ca.info"
  printf 'cn = bench server\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' >"$d/server.info"
  certtool --generate-privkey --key-type=ecdsa --outfile "$d/ca-key.pem" 2>/dev/null &&
    certtool --generate-self-signed --load-privkey "$d/ca-key.pem" --template "$d/ca.info" \
      --outfile "$d/server/ca-cert.pem" 2>/dev/null &&
    certtool --generate-privkey --key-type=ecdsa --outfile "$d/server/server-key.pem" 2>/dev/null &&
    certtool --generate-certificate --load-privkey "$d/server/server-key.pem" \
      --load-ca-certificate "$d/server/ca-cert.pem" --load-ca-privkey "$d/ca-key.pem" \
      --template "$d/server.info" --outfile "$d/server/server-cert.pem" 2>/dev/null &&
    cp "$d/server/ca-cert.pem" "$d/client/ca-cert.pem"
}

start_nbdkit_tls() {  # port certdir
  nbdkit -f --exit-with-parent -P "$WORK/nbdkit-tls.pid" -i 127.0.0.1 -p "$1" \
    --tls=on --tls-certificates="$2" file "file=$IMG" >"$WORK/nbdkit-tls.log" 2>&1 &
  PID[nbdkit-tls]=$!
  wait_pidfile nbdkit-tls "$WORK/nbdkit-tls.pid" "${PID[nbdkit-tls]}"
  PID[nbdkit-tls]=$(cat "$WORK/nbdkit-tls.pid")
}

tls_copy() {  # metric server pid src dst: MiB/s and the server's CPU seconds of one nbdcopy
  local c0
  CUR_SERVER=$2 CUR_WL=$1
  log "tls: rep $CUR_REP/$TLS_REPEAT  $1  $2"
  c0=$(cpu_seconds "$3")
  record "$1" "$(timed_nbdcopy "$4" "$5")" MiB/s hi "$([[ $1 == tls_* ]] && echo 'ratio>=0.8' || echo -)"
  record "cpu_s:$1" "$(awk -v a="$c0" -v b="$(cpu_seconds "$3")" 'BEGIN { printf "%.2f\n", b - a }')" s lo -
  case $1 in *write*) sync -f "$IMG" 2>/dev/null || sync ;; esac
}

section_tls() {
  local ports creds rep s order q kinds k u
  command -v certtool >/dev/null || { log "tls: certtool not found (apt-get install gnutls-bin)"; return 1; }
  creds=$WORK/tls
  tls_creds "$creds" || { log "tls: certtool failed"; return 1; }
  q="tls-certificates=$creds/client"
  read -r -a ports <<<"$(free_ports 2)"
  start_nbdsnap_as nbdsnap-tls "${ports[0]}" "$EXPORT=$IMG" --tls=on --tls-certificates="$creds/server"
  start_nbdkit_tls "${ports[1]}" "$creds/server"
  declare -A TURI=(
    [nbdsnap]="nbds://127.0.0.1:${ports[0]}/$EXPORT?$q"
    [nbdkit]="nbds://127.0.0.1:${ports[1]}/?$q"
  ) PURI=(
    [nbdsnap]="nbd://127.0.0.1:${ports[0]}/$EXPORT"
    [nbdkit]="nbd://127.0.0.1:${ports[1]}/"
  ) SPID=(
    [nbdsnap]=${PID[nbdsnap-tls]}
    [nbdkit]=${PID[nbdkit-tls]}
  )
  for s in nbdsnap nbdkit; do
    log "tls: $s ${TURI[$s]} size $(nbdinfo --size "${TURI[$s]}")"
  done
  kinds=tls
  [ "$TLS_PLAIN" = 1 ] && kinds="tls plain"
  order=(nbdsnap nbdkit)
  for rep in $(seq 1 "$TLS_REPEAT"); do
    CUR_REP=$rep
    for k in $kinds; do
      for s in "${order[@]}"; do
        if [ "$k" = tls ]; then u=${TURI[$s]}; else u=${PURI[$s]}; fi
        tls_copy "${k}_nbdcopy_read" "$s" "${SPID[$s]}" "$u" null:
      done
      for s in "${order[@]}"; do
        if [ "$k" = tls ]; then u=${TURI[$s]}; else u=${PURI[$s]}; fi
        tls_copy "${k}_nbdcopy_write" "$s" "${SPID[$s]}" "$SRC" "$u"
      done
    done
    order=($(printf '%s\n' "${order[@]}" | tac))
  done
  CUR_REP=0 CUR_WL=server CUR_SERVER=nbdsnap
  record tls_peak_rss_VmHWM "$(hwm_mib "${PID[nbdsnap-tls]}")" MiB lo -
  stop_server nbdsnap-tls
  stop_server nbdkit-tls
}

ratios_tls() {
  ratio "tls: nbdcopy read over TLS, nbdsnap / nbdkit" tls/nbdsnap/tls_nbdcopy_read tls/nbdkit/tls_nbdcopy_read 'ratio>=0.8'
  ratio "tls: nbdcopy write over TLS, nbdsnap / nbdkit" tls/nbdsnap/tls_nbdcopy_write tls/nbdkit/tls_nbdcopy_write 'ratio>=0.8'
  if [ "$TLS_PLAIN" = 1 ]; then
    ratio "tls: nbdsnap read, TLS / plaintext" tls/nbdsnap/tls_nbdcopy_read tls/nbdsnap/plain_nbdcopy_read -
    ratio "tls: nbdkit read, TLS / plaintext" tls/nbdkit/tls_nbdcopy_read tls/nbdkit/plain_nbdcopy_read -
    ratio "tls: nbdsnap write, TLS / plaintext" tls/nbdsnap/tls_nbdcopy_write tls/nbdsnap/plain_nbdcopy_write -
    ratio "tls: nbdkit write, TLS / plaintext" tls/nbdkit/tls_nbdcopy_write tls/nbdkit/plain_nbdcopy_write -
  fi
}
