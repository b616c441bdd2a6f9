# Systems "atun" (a static forward) and "atun_socks5" (the SOCKS5 listener):
# one gateway and one agent from the release build on loopback, the agent
# enrolled with a one-time token and advertising 127.0.0.0/8 with an empty
# deny list (the default denies loopback targets).  iperf3 speaks no SOCKS5,
# so throughput goes through a forward; round trips and connects go through
# both.  Also the memory of the gateway per idle connected agent.
#
# Ports: +40/+41 forwards (iperf/echo), +45 QUIC (UDP), +46 HTTPS API,
# +47 SOCKS5.
SUT_LABEL[atun]="atun forward"
SUT_LABEL[atun_socks5]="atun SOCKS5"

ATUN_UP=0            # gateway and agent running, the agent online
ATUN_DATA_REASON=""  # why the data plane cannot be measured, if it cannot

atun_api() { echo "https://127.0.0.1:$((BASE + 46))"; }

atun_curl() { # atun_curl PATH [curl args...]
  local path="$1"; shift
  curl -s --max-time 10 --cacert "$TMP/atun/gw/ca.crt" \
    -H "Authorization: Bearer $ATUN_ADMIN" "$@" "$(atun_api)$path"
}

atun_online() { # prints the number of online agents
  atun_curl /metrics | awk '$1 == "atun_gateway_agents{status=\"online\"}" {print $2}'
}

atun_online_at_least() { [ "$(atun_online)" -ge "$1" ] 2>/dev/null; }

# The gateway config for the bench: warn-level logs, the two forwards, the
# SOCKS5 listener, and limits sized for the agent and idle-connection runs.
atun_gateway_config() {
  "${PY[@]}" - "$1" "$BASE" "$P_IPERF" "$P_ECHO" "$BENCH_AGENTS" "$BENCH_IDLE_CONNS" <<'EOF'
import json, sys
path, base, p_iperf, p_echo, agents, idle = sys.argv[1], *map(int, sys.argv[2:])
cfg = json.load(open(path))
cfg["log_level"] = "warn"
cfg["socks5"] = {"enabled": True, "listen": f"127.0.0.1:{base + 47}", "users": []}
cfg["forwards"] = [
    {"listen": f"127.0.0.1:{base + 40}", "target": "127.0.0.1", "port": p_iperf, "agent": "bench-a"},
    {"listen": f"127.0.0.1:{base + 41}", "target": "127.0.0.1", "port": p_echo, "agent": "bench-a"},
]
lim = cfg["limits"]
lim["max_agents"] = max(lim.get("max_agents", 4096), agents + 64)
lim["client_max_connections"] = max(lim.get("client_max_connections", 4096), idle + 1024)
lim["max_streams_per_agent"] = min(65536, max(lim.get("max_streams_per_agent", 1024), idle + 1024))
lim["enroll_burst"] = 100000
lim["enroll_interval"] = "1ms"
json.dump(cfg, open(path, "w"), indent=2)
EOF
}

# atun_enroll DIR NAME SUBNETS : a token from the API, then `atun-agent
# enroll` into DIR/agent.json (pre-seeded with the settings enrollment
# keeps: no domain auto-detection, warn-level logs, DENY as the deny list).
atun_enroll() {
  local dir="$1" name="$2" subnets="$3" deny="${4:-[]}" token
  mkdir -p "$dir"
  printf '{"auto_detect_domains": false, "log_level": "warn", "deny": %s}\n' "$deny" \
    >"$dir/agent.json"
  token="$(atun_curl /jet/agent-tunnel/tokens -X POST -H 'Content-Type: application/json' \
           --data-binary "{\"ttl\":\"10m\",\"name\":\"$name\"}" |
           sed -nE 's/.*"enrollment_string" *: *"([^"]+)".*/\1/p')"
  [ -n "$token" ] || return 1
  printf '%s\n' "$token" | timeout 60 "$BIN/atun-agent" enroll - --name "$name" \
    --config "$dir/agent.json" --advertise-subnets "$subnets" >"$dir/enroll.log" 2>&1
}

atun_start_control() {
  [ -x "$BIN/atun-gateway" ] && [ -x "$BIN/atun-agent" ] ||
    { NA_REASON="no atun-gateway/atun-agent in $BIN"; return 1; }
  local d="$TMP/atun/gw"
  # A restart (for a fresh heap before a memory figure) keeps the state.
  if [ ! -f "$d/gateway.json" ]; then
    mkdir -p "$d"
    "$BIN/atun-gateway" init --state-dir "$d" --hostname localhost --ip 127.0.0.1 \
      --api-listen "127.0.0.1:$((BASE + 46))" --quic-listen "127.0.0.1:$((BASE + 45))" \
      >"$LOGDIR/atun-init.log" 2>&1 ||
      { NA_REASON="atun-gateway init failed: $(tail -n1 "$LOGDIR/atun-init.log")"; return 1; }
    ATUN_ADMIN="$(awk '$1 == "admin_token" {print $2}' "$LOGDIR/atun-init.log")"
    atun_gateway_config "$d/gateway.json"
  fi
  bg_start atun-gateway "$BIN/atun-gateway" run --config "$d/gateway.json"
  wait_until 15 atun_curl /health/ready -f ||
    { NA_REASON="the gateway did not become ready: $(tail -n1 "$LOGDIR/atun-gateway.log")"; return 1; }
  if ! grep -q agent_id "$TMP/atun/a/agent.json" 2>/dev/null; then
    atun_enroll "$TMP/atun/a" bench-a 127.0.0.0/8 ||
      { NA_REASON="enrollment failed: $(tail -n1 "$TMP/atun/a/enroll.log" 2>/dev/null)"; return 1; }
  fi
  bg_start atun-agent "$BIN/atun-agent" run --config "$TMP/atun/a/agent.json"
  wait_until 20 atun_online_at_least 1 ||
    { NA_REASON="the agent did not come online: $(tail -n1 "$LOGDIR/atun-agent.log")"; return 1; }
  ATUN_UP=1
}

# While the data plane is being built, a gateway that does not carry a
# connection yet makes the atun rows "not available" instead of failing
# the run.  BENCH_REQUIRE_ATUN=1 makes it fatal (remove this fallback when
# the data plane has landed).
atun_probe() { # atun_probe NAME ARGS... : one echo through the tunnel
  local name="$1"; shift
  timeout 15 "$BIN/bench_connect" "$@" --count 3 --timeout-ms 3000 \
    >"$LOGDIR/$name-probe.log" 2>&1 && return 0
  NA_REASON="no echo through the $name endpoint: $(grep -m1 -v '^connect count' \
    "$LOGDIR/$name-probe.log" | cut -c1-120) (data plane not built yet?)"
  [ "${BENCH_REQUIRE_ATUN:-1}" = 1 ] && die "$NA_REASON"
  return 1
}

atun_start() {
  atun_start_control || return 1
  if ! tcp_listening $((BASE + 41)); then
    NA_REASON="the gateway does not listen on forward 127.0.0.1:$((BASE + 41)) (data plane not built yet?)"
    [ "${BENCH_REQUIRE_ATUN:-1}" = 1 ] && die "$NA_REASON"
    ATUN_DATA_REASON="$NA_REASON"
    return 1
  fi
  atun_probe atun $(atun_echo_args) || { ATUN_DATA_REASON="$NA_REASON"; return 1; }
}

atun_stop() { bg_stop atun-agent; bg_stop atun-gateway; ATUN_UP=0; }
atun_restart() { atun_stop; atun_start; }
atun_pids() { echo "${BG_PID[atun-gateway]} ${BG_PID[atun-agent]}"; }
atun_gateway_pid() { bg_main_pid atun-gateway; }
atun_iperf_port() { echo $((BASE + 40)); }
atun_echo_args() { echo "--connect 127.0.0.1:$((BASE + 41))"; }

# "atun_socks5" shares the processes of "atun"; start/stop only check.
atun_socks5_start() {
  [ "$ATUN_UP" = 1 ] || { NA_REASON="atun is not running"; return 1; }
  if ! tcp_listening $((BASE + 47)); then
    NA_REASON="the gateway does not listen on SOCKS5 127.0.0.1:$((BASE + 47)) (data plane not built yet?)"
    [ "${BENCH_REQUIRE_ATUN:-1}" = 1 ] && die "$NA_REASON"
    return 1
  fi
  atun_probe atun_socks5 $(atun_socks5_echo_args)
}
atun_socks5_stop() { :; }
atun_socks5_restart() { atun_restart && atun_socks5_start; }
atun_socks5_pids() { atun_pids; }
atun_socks5_gateway_pid() { atun_gateway_pid; }
atun_socks5_iperf_port() { :; }  # iperf3 has no SOCKS5 client
atun_socks5_echo_args() {
  echo "--connect 127.0.0.1:$((BASE + 47)) --socks5 --target 127.0.0.1:$P_ECHO"
}

# --- memory per idle connected agent ------------------------------------------------------------
# N more agents, each its own process with its own identity (an agent's
# newer connection replaces its older one, so they cannot share one),
# each advertising one /24 of 10.0.0.0/8.  Enrolled once; then, per run,
# all started, the gateway's private memory read once all are online, all
# stopped.

# Four enrollments at a time: each is mostly waiting for the other side.
atun_enroll_many() { # atun_enroll_many N
  local n="$1" i failed=0 done_pid jobs=() left p
  log "atun: enrolling $n agents for the memory run"
  for ((i = 0; i < n || ${#jobs[@]} > 0; ++i)); do
    if ((i < n)); then
      atun_enroll "$TMP/atun/m$i" "bench-m$i" "10.$((i / 256)).$((i % 256)).0/24" \
        '["127.0.0.0/8"]' &
      jobs+=("$!")
      ((${#jobs[@]} >= 4)) || continue
    fi
    wait -n -p done_pid "${jobs[@]}" || failed=$((failed + 1))
    left=()
    for p in "${jobs[@]}"; do [ "$p" = "$done_pid" ] || left+=("$p"); done
    jobs=("${left[@]}")
  done
  [ "$failed" = 0 ] || { log "atun: $failed enrollments failed"; return 1; }
}

atun_agents_run() { # atun_agents_run N RUN
  local n="$1" run="$2" gw i names=() m0 m1 sample
  # A fresh gateway, so that heap freed by earlier work (enrollments, idle
  # connections) does not absorb the agents' state and hide it.
  atun_stop
  atun_start_control || { log "atun: restart failed: $NA_REASON"; return 0; }
  gw="$(atun_gateway_pid)"
  m0="$(proc_mem "$gw")"
  for ((i = 0; i < n; ++i)); do
    bg_start "atun-m$i" "$BIN/atun-agent" run --config "$TMP/atun/m$i/agent.json"
    names+=("atun-m$i")
    # Batches of 50, so that handshakes do not all land in the same instant.
    (( i % 50 == 49 )) && sleep 0.2
  done
  log "atun: $n agents started"
  if wait_until $((60 + n / 10)) atun_online_at_least $((n + 1)); then
    log "atun: $n agents online"
    sleep 2
    m1="$(proc_mem "$gw")"
    record mem_agent_kib atun "$run" "$(calc "(${m1#* } - ${m0#* }) / $n")"
    sample=()
    for ((i = 0; i < n && i < 50; ++i)); do sample+=("$(bg_main_pid "atun-m$i")"); done
    record agent_pss_kib atun "$run" "$(proctool mem-median "${sample[@]}")"
    log "atun: $n agents online, gateway private $(calc "${m0#* }/1024") -> $(calc "${m1#* }/1024") MiB"
  else
    log "atun: only $(atun_online) of $((n + 1)) agents online in time; no memory figure"
  fi
  bg_stop_many "${names[@]}"
  wait_until 60 eval '[ "$(atun_online)" -le 1 ]' || log "atun: agents still online after stop"
}

atun_agents_memory() {
  local n="$BENCH_AGENTS" r
  [ "$n" -gt 0 ] || return 0
  [ "$ATUN_UP" = 1 ] || { record_na atun-agents "atun is not running"; return 0; }
  atun_enroll_many "$n" || { record_na atun-agents "enrollment of the memory agents failed"; return 0; }
  log "atun: $n agents enrolled"
  for ((r = 1; r <= BENCH_AGENT_RUNS; ++r)); do atun_agents_run "$n" "$r"; done
}
