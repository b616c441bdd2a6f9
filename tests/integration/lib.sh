# Shared helpers for the integration tests (sourced, not run).
# Every test gets: $1 = build directory, $2 = source root.
set -euo pipefail
BUILD="${1:?build dir}"
SRC="${2:?source root}"
GW="$BUILD/atun-gateway"
AG="$BUILD/atun-agent"
WORK="$(mktemp -d /tmp/atun-it.XXXXXX)"
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

# A free TCP/UDP port on loopback, chosen by the kernel.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for CMD... : retries CMD every 0.1 s for up to $WAIT_S seconds (default 10).
wait_for() {
  local deadline=$(( $(date +%s%N) + ${WAIT_S:-10} * 1000000000 ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# start NAME CMD... : runs CMD in the background, logs to $WORK/NAME.log.
start() {
  local name="$1"; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  eval "PID_$name=$!"
}
