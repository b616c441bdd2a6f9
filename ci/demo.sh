#!/usr/bin/env bash
# The main job: sets everything up on a fresh Debian 12 machine, builds atun
# and runs it end to end on this machine, printing each step:
#   1. a gateway is initialised (CA, server certificate, store, config) and run;
#   2. an enrollment token is created and an agent enrolls with it over HTTPS
#      pinned to the gateway's CA;
#   3. the agent runs, dials the gateway over QUIC with mutual TLS and
#      advertises 127.0.0.0/8; the API lists it online and resolves a target;
#   4. a local web server stands behind the agent and a file is fetched through
#      the gateway's SOCKS5 listener and the tunnel, checked by SHA-256;
#   5. the deterministic simulator runs a fleet through a gateway crash.
# Everything listens on 127.0.0.1 only; the demo stops every process it
# started and removes its files.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/ci/deps.sh"
bash "$root/ci/build.sh" release
bin="$root/build/release"

work="$(mktemp -d /tmp/atun-demo.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# until_ok SECONDS CMD...: retries CMD every 0.2 s for at most SECONDS.
until_ok() {
  local limit=$(( $1 * 5 )); shift
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

api=$(port); quic=$(port); socks=$(port); web=$(port)
mkdir -p "$work/gw" "$work/agent" "$work/www"

step "1. gateway: init (CA, server certificate, store, config) in $work/gw"
"$bin/atun-gateway" init --state-dir "$work/gw/state" --hostname localhost --ip 127.0.0.1 \
  --api-listen "127.0.0.1:$api" --quic-listen "127.0.0.1:$quic" | tee "$work/gw/init.txt"
admin="$(awk '/^admin_token/ {print $2}' "$work/gw/init.txt")"
cfg="$work/gw/state/gateway.json"
python3 - "$cfg" "$socks" <<'EOF'
import json, sys
path, port = sys.argv[1], sys.argv[2]
cfg = json.load(open(path))
cfg["socks5"] = {"enabled": True, "listen": "127.0.0.1:" + port, "users": []}
json.dump(cfg, open(path, "w"), indent=2)
EOF
"$bin/atun-gateway" run --config "$cfg" 2>"$work/gw/gateway.log" &
pids+=($!)
until_ok 10 curl -sf --cacert "$work/gw/state/ca.crt" "https://localhost:$api/health/ready" \
  || { echo "gateway did not come up:"; cat "$work/gw/gateway.log"; exit 1; }
echo "gateway running: QUIC 127.0.0.1:$quic, API https://localhost:$api, SOCKS5 127.0.0.1:$socks"

step "2. token create, then the agent enrolls with the one string"
enroll="$("$bin/atun-gateway" token create --config "$cfg" --ttl 10m --name demo)"
echo "enrollment string: ${enroll:0:14}...(secret, pin and API URL)"
echo "$enroll" | "$bin/atun-agent" enroll - --name demo-agent --advertise-subnets 127.0.0.0/8 \
  --config "$work/agent/agent.json" --state-dir "$work/agent"
# The demo's target is on loopback, which the agent denies by default.
python3 - "$work/agent/agent.json" <<'EOF'
import json, sys
path = sys.argv[1]
cfg = json.load(open(path))
cfg["deny"] = [d for d in cfg.get("deny", []) if d not in ("127.0.0.0/8", "::1/128")]
json.dump(cfg, open(path, "w"), indent=2)
EOF

step "3. agent run: QUIC with mutual TLS, advertises 127.0.0.0/8"
"$bin/atun-agent" run --config "$work/agent/agent.json" 2>"$work/agent/agent.log" &
pids+=($!)
agents() { curl -sf --cacert "$work/gw/state/ca.crt" -H "Authorization: Bearer $admin" \
             "https://localhost:$api/jet/agent-tunnel/agents"; }
online() { agents | python3 -c 'import json,sys; a=json.load(sys.stdin)["agents"]; sys.exit(0 if any(x["status"]=="online" for x in a) else 1)'; }
until_ok 10 online || { echo "agent did not come online:"; tail -20 "$work/agent/agent.log"; exit 1; }
echo "GET /jet/agent-tunnel/agents:"
agents | python3 -m json.tool | head -40
echo "POST /jet/agent-tunnel/agents/resolve-target {\"target\":\"127.0.0.1\"}:"
curl -sf --cacert "$work/gw/state/ca.crt" -H "Authorization: Bearer $admin" \
  -H 'Content-Type: application/json' -d '{"target":"127.0.0.1"}' \
  "https://localhost:$api/jet/agent-tunnel/agents/resolve-target" | python3 -m json.tool

step "4. bytes through the tunnel: curl -> SOCKS5 -> gateway -> QUIC -> agent -> web server"
head -c 4194304 /dev/urandom > "$work/www/payload.bin"
(cd "$work/www" && exec python3 -m http.server --bind 127.0.0.1 "$web") >"$work/www.log" 2>&1 &
pids+=($!)
until_ok 10 curl -sf "http://127.0.0.1:$web/payload.bin" -o /dev/null
curl -sf --max-time 30 --socks5-hostname "127.0.0.1:$socks" "http://127.0.0.1:$web/payload.bin" \
  -o "$work/fetched.bin"
want="$(sha256sum < "$work/www/payload.bin" | cut -d' ' -f1)"
got="$(sha256sum < "$work/fetched.bin" | cut -d' ' -f1)"
echo "sent    sha256 $want"
echo "fetched sha256 $got"
[ "$want" = "$got" ] || { echo "MISMATCH"; exit 1; }
echo "4 MiB through the tunnel, byte-exact"

step "5. the simulator: 8 agents, gateway crash and restart, then every fault kind a seed picks"
seed="${ATUN_DEMO_SEED:-2026}"
"$bin/atun-sim" --seed "$seed" --scenario gateway_restart --agents 8 --duration 120
"$bin/atun-sim" --seed "$seed" --scenario mixed --duration 180 --twice

step "done: stopping the agent and the gateway (SIGTERM: Goodbye and drain)"
