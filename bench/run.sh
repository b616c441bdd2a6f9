#!/usr/bin/env bash
# The benchmark: builds the release build, starts atun and the baselines
# (direct TCP, socat two-hop relay, ssh -L, stunnel) on loopback, measures
# them in the same run, prints a table of medians with min-max and the
# ratios atun / baseline, and writes a PNG chart.  See bench/README.md.
#
# usage: bash bench/run.sh            (as root: sshd runs as root)
#
# Environment (defaults in brackets; BENCH_QUICK=1 changes several):
#   BENCH_QUICK=1            a ~2-minute run: fewer runs and smaller counts
#   BENCH_RUNS [5|3]         repetitions of every traffic measurement
#   BENCH_SYSTEMS            systems to measure [direct socat ssh stunnel atun atun_socks5]
#   BENCH_IPERF_SECONDS [3|1]      length of one iperf3 run
#   BENCH_PINGPONG_COUNT [5000|2000] round trips per ping-pong run
#   BENCH_CONNECT_COUNT [500|200]  connections per connect run
#   BENCH_IDLE_CONNS [1000|200]    idle connections per memory run (0: skip)
#   BENCH_IDLE_RUNS [3|2]          memory runs (each restarts the tunnels)
#   BENCH_AGENTS [1000|100]        idle agent processes for the agent memory run (0: skip)
#   BENCH_AGENT_RUNS [1]           repetitions of the agent memory run
#   BENCH_ROUTE [1]                run bench_route (BENCH_ROUTE_ARGS [--routes 100000])
#   BENCH_SIM [1]                  run the simulator (BENCH_SIM_DURATION [3600|300] s)
#   BENCH_PORT_BASE [47100]        first of the fixed loopback ports (uses base..base+49)
#   BENCH_BUILD [1]                run `bash ci/build.sh release` first
#   BENCH_BIN [build/release]      where the programs are
#   BENCH_OUT [bench/out]          where the table, chart and raw results go
#   BENCH_MAX_SECONDS [1800]       hard bound on the whole run and on every daemon
#   BENCH_INSTALL [1]              apt-get install missing tools (iperf3 socat
#                                  stunnel4 openssh-server gnuplot-nox)
#   BENCH_REQUIRE_ATUN [1]         fail instead of "not available" when atun's
#                                  data plane cannot be measured
#
# Exit codes: 0 done (figures that could not be taken say why in the table),
# 1 setup failed (build, tools, a port taken, a baseline not starting),
# 124 the whole run exceeded BENCH_MAX_SECONDS.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
: "${BENCH_MAX_SECONDS:=1800}"

# The whole run is bounded: re-run under timeout once.  The trap below stops
# every process when timeout sends TERM.
if [ -z "${BENCH_BOUNDED:-}" ]; then
  export BENCH_BOUNDED=1 BENCH_MAX_SECONDS
  exec timeout -k 30 "$BENCH_MAX_SECONDS" bash "$0" "$@"
fi

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  : "${BENCH_RUNS:=3}" "${BENCH_IPERF_SECONDS:=1}" "${BENCH_PINGPONG_COUNT:=2000}"
  : "${BENCH_CONNECT_COUNT:=200}" "${BENCH_IDLE_CONNS:=200}" "${BENCH_AGENTS:=100}"
  : "${BENCH_SIM_DURATION:=300}" "${BENCH_ROUTE_ARGS:=--kind ipv4 --routes 100000}"
  : "${BENCH_IDLE_RUNS:=2}"
fi
: "${BENCH_RUNS:=5}" "${BENCH_IPERF_SECONDS:=3}" "${BENCH_PINGPONG_COUNT:=5000}"
: "${BENCH_CONNECT_COUNT:=500}" "${BENCH_IDLE_CONNS:=1000}" "${BENCH_AGENTS:=1000}"
: "${BENCH_IDLE_RUNS:=3}" "${BENCH_AGENT_RUNS:=1}" "${BENCH_ROUTE:=1}" "${BENCH_ROUTE_ARGS:=--routes 100000}"
: "${BENCH_SIM:=1}" "${BENCH_SIM_DURATION:=3600}" "${BENCH_PORT_BASE:=47100}"
: "${BENCH_BUILD:=1}" "${BENCH_BIN:=$ROOT/build/release}" "${BENCH_OUT:=$BENCH_DIR/out}"
: "${BENCH_INSTALL:=1}" "${BENCH_SYSTEMS:=direct socat ssh stunnel atun atun_socks5}"

BASE="$BENCH_PORT_BASE"
P_IPERF=$((BASE + 0))
P_ECHO=$((BASE + 1))
BIN="$BENCH_BIN"
OUT="$BENCH_OUT"
declare -A SUT_LABEL=()

source "$BENCH_DIR/lib/common.sh"
source "$BENCH_DIR/lib/measure.sh"
for f in "$BENCH_DIR"/lib/sut_*.sh; do source "$f"; done

TOOLS_PKGS=(iperf3:iperf3 socat:socat stunnel4:stunnel4 /usr/sbin/sshd:openssh-server
            gnuplot:gnuplot-nox taskset:util-linux ss:iproute2 curl:curl openssl:openssl
            ssh:openssh-client)

install_tools() {
  local missing=() t
  for t in "${TOOLS_PKGS[@]}"; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  [ "$BENCH_INSTALL" = 1 ] || die "missing: ${missing[*]} (BENCH_INSTALL=0)"
  [ "$(id -u)" = 0 ] || die "missing: ${missing[*]}; install them or run as root"
  log "installing ${missing[*]}"
  # Debian starts sshd and iperf3 services on install; the bench runs its
  # own on fixed ports, so keep the packages from starting any.
  local policy=/usr/sbin/policy-rc.d made=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; made=1; fi
  timeout 300 env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$TMP/apt.log" 2>&1 &&
    timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" >>"$TMP/apt.log" 2>&1 || { tail -n 20 "$TMP/apt.log" >&2; die "apt-get failed"; }
  [ "$made" = 0 ] || rm -f "$policy"
}

check_ports() {
  local p
  for p in $(seq "$BASE" $((BASE + 49))); do
    port_free "$p" || die "port $p (in $BASE-$((BASE + 49))) is in use; set BENCH_PORT_BASE"
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  bg_stop_all
  # Keep the logs of the last run for a look after the fact.
  rm -rf "$OUT/logs"
  [ -d "$LOGDIR" ] && cp -r "$LOGDIR" "$OUT/logs"
  rm -rf "$TMP"
  exit "$rc"
}

machine_info() {
  printf 'date: %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'machine: %s, %s cores, %s GiB, kernel %s\n' \
    "$(sed -nE 's/^model name\s*:\s*//p' /proc/cpuinfo | head -n1)" "$(nproc)" \
    "$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)" "$(uname -r)"
  printf 'commit: %s\n' "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
  printf 'versions: %s; %s; %s; %s\n' "$(ssh -V 2>&1)" "$(stunnel4 -version 2>&1 | grep -m1 '^stunnel')" \
    "$(iperf3 --version | head -n1)" "$(socat -V | grep -m1 'socat version')"
  printf 'settings: runs=%s iperf=%ss pingpong=%s connect=%s idle_conns=%s (runs %s) agents=%s\n' \
    "$BENCH_RUNS" "$BENCH_IPERF_SECONDS" "$BENCH_PINGPONG_COUNT" "$BENCH_CONNECT_COUNT" \
    "$BENCH_IDLE_CONNS" "$BENCH_IDLE_RUNS" "$BENCH_AGENTS"
}

start_systems() {
  local s
  UP=()
  for s in $BENCH_SYSTEMS; do
    declare -F "${s}_start" >/dev/null || die "unknown system $s"
    NA_REASON=""
    log "starting $s"
    if "${s}_start"; then
      UP+=("$s")
    else
      log "$s: not available: $NA_REASON"
      record_na "$s" "$NA_REASON"
      case "$s" in atun|atun_socks5) ;; *) die "baseline $s did not start: $NA_REASON" ;; esac
    fi
  done
}

main() {
  TMP="$(mktemp -d /tmp/atun-bench.XXXXXX)"
  LOGDIR="$TMP/logs"
  mkdir -p "$LOGDIR" "$OUT"
  printf '*\n' >"$OUT/.gitignore"   # results stay out of git
  trap cleanup EXIT INT TERM
  install_tools
  if [ "$BENCH_BUILD" = 1 ]; then
    log "building the release build (ci/build.sh release)"
    timeout 1200 bash "$ROOT/ci/build.sh" release >"$LOGDIR/build.log" 2>&1 ||
      { tail -n 30 "$LOGDIR/build.log" >&2; die "release build failed"; }
  fi
  local t
  for t in bench_pingpong bench_connect; do
    [ -x "$BIN/$t" ] || die "no $BIN/$t (build first, or set BENCH_BIN)"
  done
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  check_ports
  RESULTS="$OUT/results.tsv"
  : >"$RESULTS"
  machine_info >"$OUT/machine.txt"
  start_targets
  start_systems
  local run s
  for ((run = 1; run <= BENCH_RUNS; ++run)); do
    log "run $run/$BENCH_RUNS: throughput"
    for s in "${UP[@]}"; do measure_tput "$s" "$run" 1; measure_tput "$s" "$run" 8; done
    log "run $run/$BENCH_RUNS: ping-pong"
    for s in "${UP[@]}"; do measure_pingpong "$s" "$run" 0; measure_pingpong "$s" "$run" 1; done
    log "run $run/$BENCH_RUNS: connect"
    for s in "${UP[@]}"; do measure_connect "$s" "$run"; done
    ((run <= BENCH_IDLE_RUNS)) || continue
    log "run $run/$BENCH_RUNS: idle connections"
    for s in "${UP[@]}"; do restart_system "$s" && measure_idle "$s" "$run"; done
  done
  [ "$ATUN_UP" = 1 ] && atun_agents_memory
  [ "$ATUN_UP" = 1 ] || [ "$BENCH_AGENTS" = 0 ] || record_na atun-agents "atun is not running"
  bg_stop_all
  [ "$BENCH_ROUTE" = 1 ] && measure_route
  [ "$BENCH_SIM" = 1 ] && measure_sim
  "${PY[@]}" "$BENCH_DIR/report.py" "$OUT" "$BENCH_DIR/chart.gp"
}

main "$@"
