# The measurements of bench/run.sh (sourced, not run).  Each takes a system
# name S (whose functions S_pids, S_iperf_port, S_echo_args are in
# lib/sut_*.sh) and a run number, and appends figures with `record`.  A
# failed step logs why and records nothing for that run; every command is
# bounded by `timeout`.

# --- targets: an iperf3 server and an echo server ------------------------------------------

start_targets() {
  bg_start iperf3-server iperf3 -s -B 127.0.0.1 -p "$P_IPERF"
  bg_start echo-server "$BIN/bench_pingpong" serve --listen "127.0.0.1:$P_ECHO" \
    --max-conns $((BENCH_IDLE_CONNS * 2 + 1024)) --duration "$BENCH_MAX_SECONDS"
  wait_tcp "$P_IPERF" iperf3-server
  wait_tcp "$P_ECHO" echo-server
}

# iperf3 serves one test at a time; a client killed by its timeout can
# leave it stuck, so a failure restarts it.
restart_iperf_server() {
  bg_stop iperf3-server
  bg_start iperf3-server iperf3 -s -B 127.0.0.1 -p "$P_IPERF"
  wait_tcp "$P_IPERF" iperf3-server
}

# --- 1. throughput and CPU per Gbit/s -------------------------------------------------------------

# measure_tput S RUN STREAMS : Gbit/s of one iperf3 run with STREAMS
# parallel connections, and the CPU cores the tunnel processes used per
# Gbit/s over the wall time of that run.
measure_tput() {
  local s="$1" run="$2" par="$3" port pids out="$TMP/iperf-$1-$2-$3.json" c0 c1 t0 t1 gbps
  port="$("${s}_iperf_port")"
  [ -n "$port" ] || return 0
  pids="$("${s}_pids")"
  [ -z "$pids" ] || c0="$(proc_cpu $pids)"
  t0="$(now_ns)"
  if ! timeout $((BENCH_IPERF_SECONDS + 30)) iperf3 -c 127.0.0.1 -p "$port" \
         -t "$BENCH_IPERF_SECONDS" -P "$par" --connect-timeout 5000 -J >"$out" 2>&1; then
    log "$s: iperf3 -P $par failed: $(proctool iperf "$out" 2>&1 | tail -n1)"
    restart_iperf_server
    return 0
  fi
  t1="$(now_ns)"
  gbps="$(proctool iperf "$out")" || return 0
  record "tput${par}_gbps" "$s" "$run" "$gbps"
  [ -n "$pids" ] || return 0
  c1="$(proc_cpu $pids)"
  record "cpu${par}_cores_per_gbps" "$s" "$run" \
    "$(calc "($c1 - $c0) / (($t1 - $t0) / 1e9) / $gbps")"
}

# --- 2. 64-byte round trips -------------------------------------------------------------------

# measure_pingpong S RUN PINNED : p50/p99 of BENCH_PINGPONG_COUNT round
# trips.  PINNED=1 puts every process (client, tunnel, echo server) on CPU
# 0 for the run and restores all CPUs after.
measure_pingpong() {
  local s="$1" run="$2" pinned="$3" out="$TMP/pp-$1-$2-$3.txt" prefix=() metric=pp pids
  pids="$("${s}_pids")"
  if [ "$pinned" = 1 ]; then
    pin_tree 0 $pids "${BG_PID[echo-server]}"
    prefix=(taskset -c 0)
    metric=pp_pin
  fi
  # shellcheck disable=SC2046
  timeout 120 "${prefix[@]}" "$BIN/bench_pingpong" client $("${s}_echo_args") \
    --count "$BENCH_PINGPONG_COUNT" >"$out" 2>&1 || log "$s: pingpong failed: $(tail -n1 "$out")"
  [ "$pinned" = 1 ] && pin_tree "0-$(( $(nproc) - 1 ))" $pids "${BG_PID[echo-server]}"
  grep -q '^pingpong ' "$out" || return 0
  record "${metric}_p50_us" "$s" "$run" "$(kv "$out" p50_us)"
  record "${metric}_p99_us" "$s" "$run" "$(kv "$out" p99_us)"
}

# --- 3. connect -> first byte --------------------------------------------------------------------

measure_connect() {
  local s="$1" run="$2" out="$TMP/conn-$1-$2.txt"
  # shellcheck disable=SC2046
  timeout 300 "$BIN/bench_connect" $("${s}_echo_args") --count "$BENCH_CONNECT_COUNT" \
    >"$out" 2>&1 || log "$s: connect failed: $(grep -v '^connect count' "$out" | tail -n1)"
  grep -q '^connect count' "$out" || return 0
  [ "$(kv "$out" count)" -gt 0 ] || return 0
  record conn_p50_us "$s" "$run" "$(kv "$out" p50_us)"
  record conn_p99_us "$s" "$run" "$(kv "$out" p99_us)"
  [ "$(kv "$out" fails)" = 0 ] || record conn_fails "$s" "$run" "$(kv "$out" fails)"
}

# --- 4. memory per idle tunnelled connection --------------------------------------------------------

# restart_system S : stop and start again, for a fresh heap before a memory
# figure (freed memory of earlier runs would otherwise absorb the growth).
restart_system() {
  NA_REASON=""
  if declare -F "${1}_restart" >/dev/null; then "${1}_restart"; else "${1}_stop"; "${1}_start"; fi &&
    return 0
  log "$1: restart failed: $NA_REASON"
  return 1
}

# measure_idle S RUN : opens BENCH_IDLE_CONNS connections through the
# freshly started tunnel (each proven by a one-byte echo), and divides the growth of the
# tunnel processes' summed Pss by their number.  For atun also the growth
# of the gateway's private memory alone (the figure the issue targets).
measure_idle() {
  local s="$1" run="$2" n="$BENCH_IDLE_CONNS" pids m0 m1 g0="" g1 gw=""
  pids="$("${s}_pids")"
  [ -n "$pids" ] && [ "$n" -gt 0 ] || return 0
  declare -F "${s}_gateway_pid" >/dev/null && gw="$("${s}_gateway_pid")"
  m0="$(proc_mem $pids)"
  [ -z "$gw" ] || g0="$(proc_mem "$gw")"
  # shellcheck disable=SC2046
  bg_start idle-client "$BIN/bench_connect" $("${s}_echo_args") --hold "$n" --hold-max 300
  if wait_until $((30 + n / 20)) grep -q '^ready' "$LOGDIR/idle-client.log"; then
    sleep 1
    m1="$(proc_mem $pids)"
    [ -z "$gw" ] || g1="$(proc_mem "$gw")"
    record mem_conn_kib "$s" "$run" "$(calc "(${m1% *} - ${m0% *}) / $n")"
    [ -z "$gw" ] || record mem_conn_gw_kib "$s" "$run" "$(calc "(${g1#* } - ${g0#* }) / $n")"
  else
    log "$s: $n idle connections not ready: $(tail -n1 "$LOGDIR/idle-client.log")"
  fi
  bg_stop idle-client
  # Let per-connection processes and state go before the next figure.
  sleep 1
}

# --- 5. the core: route lookups and the simulator ----------------------------------------------

measure_route() {
  local out="$OUT/bench_route.txt"
  [ -x "$BIN/bench_route" ] || { log "no $BIN/bench_route: route figures skipped"; return 0; }
  log "route lookup: bench_route ${BENCH_ROUTE_ARGS}"
  # shellcheck disable=SC2086
  timeout 600 "$BIN/bench_route" $BENCH_ROUTE_ARGS >"$out" 2>&1 || { log "bench_route failed"; return 0; }
  # kind routes table_ns loads scan_ns speedup ...
  awk '$2 == 100000 && $3 ~ /^[0-9.]+$/ {print $1, $3, $5}' "$out" | while read -r kind t sc; do
    record "route_${kind}_ns" atun-core 1 "$t"
    record "route_${kind}_scan_ns" atun-core 1 "$sc"
  done
}

measure_sim() {
  local out="$OUT/atun-sim.txt" v
  [ -x "$BIN/atun-sim" ] || { log "no $BIN/atun-sim: simulator speed skipped"; return 0; }
  log "simulator: atun-sim --seed 1 --scenario steady --agents 1000 --duration $BENCH_SIM_DURATION"
  timeout 900 "$BIN/atun-sim" --seed 1 --scenario steady --agents 1000 \
    --duration "$BENCH_SIM_DURATION" >"$out" 2>&1 || { log "atun-sim failed"; return 0; }
  v="$(sed -nE 's/.*speed: .* ([0-9.]+) agent-s per wall s.*/\1/p' "$out")"
  [ -z "$v" ] || record sim_agent_s_per_s atun-core 1 "$v"
}
