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

# gw_init : `atun-gateway init` into $WORK/gw on fresh loopback ports.  Sets
# API_PORT, QUIC_PORT, D (state dir), GCFG (its gateway.json), CA, B (API
# base URL) and ADMIN (the admin token).
gw_init() {
  API_PORT=$(free_port)
  QUIC_PORT=$(free_port)
  D="$WORK/gw"
  GCFG="$D/gateway.json"
  CA="$D/ca.crt"
  B="https://127.0.0.1:$API_PORT"
  "$GW" init --state-dir "$D" --hostname localhost --ip 127.0.0.1 \
    --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" >"$WORK/init.out"
  ADMIN=$(awk '$1 == "admin_token" {print $2}' "$WORK/init.out")
}

# metric NAME{LABELS} : the value of one line of the gateway's /metrics.
metric() {
  curl -s --max-time 5 --cacert "$CA" -H "Authorization: Bearer $ADMIN" "$B/metrics" |
    awk -v k="$1" '$1 == k {print $2}'
}

# enroll_agent DIR NAME [ENROLL ARGS...] : a one-time token from the gateway
# of gw_init, then `atun-agent enroll` into DIR/agent.json.
enroll_agent() {
  local dir="$1" name="$2"; shift 2
  mkdir -p "$dir"
  "$GW" token create --config "$GCFG" --ttl 10m 2>/dev/null |
    "$AG" enroll - --name "$name" --config "$dir/agent.json" "$@" >"$dir/enroll.out" 2>&1 ||
    { cat "$dir/enroll.out"; fail "enroll $name"; }
}

# sum_target PORT : starts "sum", a target on 127.0.0.1:PORT that reads each
# connection to EOF, then answers "<length> <sha256 hex>" and closes.
sum_target() {
  cat >"$WORK/sum.py" <<'PY'
import hashlib, socket, sys, threading
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
def serve(c):
    h, n = hashlib.sha256(), 0
    while True:
        b = c.recv(65536)
        if not b: break
        h.update(b); n += len(b)
    c.sendall(b"%d %s" % (n, h.hexdigest().encode()))
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
  start sum python3 "$WORK/sum.py" "$1"
}
