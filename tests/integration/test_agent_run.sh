# `atun-agent run` against the real gateway on loopback: online within 2 s,
# auto-detected domains advertised, a SIGHUP reload followed by the gateway
# within one heartbeat on the same connection, recovery after the gateway
# is killed and restarted, a revocation logged as a refusal, and a SIGTERM
# that says Goodbye and exits 0.
source "$(dirname "$0")/lib.sh"

API_PORT=$(free_port)
QUIC_PORT=$(free_port)
GWDIR="$WORK/gw"
ADIR="$WORK/agent"
HEARTBEAT_MS=1000

"$GW" init --state-dir "$GWDIR" --hostname localhost --ip 127.0.0.1 \
  --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" \
  >"$WORK/init.out" 2>&1 || fail "gateway init: $(cat "$WORK/init.out")"
ADMIN=$(awk '$1 == "admin_token" {print $2}' "$WORK/init.out")
[ -n "$ADMIN" ] || fail "no admin token in: $(cat "$WORK/init.out")"
python3 - "$GWDIR/gateway.json" "$HEARTBEAT_MS" <<'EOF'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["socks5"]["enabled"] = False
c["heartbeat_interval"] = int(sys.argv[2])
c["drain_timeout"] = "2s"
json.dump(c, open(p, "w"), indent=2)
EOF

start_gateway() {
  start gw "$GW" run --config "$GWDIR/gateway.json"
  wait_for grep -q api_listening "$WORK/gw.log" || fail "gateway did not start: $(cat "$WORK/gw.log")"
}

api() { # api METHOD PATH [JSON]
  local args=(-sS --max-time 5 --cacert "$GWDIR/ca.crt" -H "Authorization: Bearer $ADMIN" -X "$1")
  [ $# -lt 3 ] || args+=(-H 'Content-Type: application/json' -d "$3")
  curl "${args[@]}" "https://localhost:$API_PORT$2"
}

# agent_field FIELD: the field of our agent in the agent list.
agent_field() {
  api GET /jet/agent-tunnel/agents | python3 -c '
import json, sys
for a in json.load(sys.stdin)["agents"]:
    if a["id"] == sys.argv[1]: print(json.dumps(a[sys.argv[2]]))' "$ID" "$1"
}

# Polled: one curl, no python (whose start-up alone can take half a second
# on a loaded machine).
online() { api GET "/jet/agent-tunnel/agents/$ID" | grep -q '"status": *"online"'; }

# routed TARGET ROUTE: resolve-target picks our agent over ROUTE (the only
# agent, so the only candidate).  Polled: curl and grep only.
routed() {
  local out
  out=$(api POST /jet/agent-tunnel/agents/resolve-target "{\"target\": \"$1\"}") || return 1
  grep -q "\"agent_id\": *\"$ID\"" <<<"$out" && grep -q "\"route\": *\"$2\"" <<<"$out"
}

metric() {
  api GET /metrics | awk -v m="$1" '$1 == m {print $2}'
}

elapsed_ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# log_ms FILE PATTERN: the time of the first line matching PATTERN, in ms
# since the epoch (from its ts= field).
log_ms() {
  python3 - "$1" "$2" <<'EOF'
import datetime, re, sys
for line in open(sys.argv[1]):
    if re.search(sys.argv[2], line):
        ts = re.match(r"ts=(\S+)Z ", line).group(1)
        t = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f")
        print(int(t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000))
        sys.exit(0)
sys.exit(1)
EOF
}

start_gateway

# --- enroll, with a resolv.conf to detect domains from --------------------------
mkdir -p "$ADIR"
printf 'nameserver 192.0.2.53\nsearch Corp.Example lab.example single\n' >"$WORK/resolv.conf"
cat >"$ADIR/agent.json" <<EOF
{"resolv_conf": "$WORK/resolv.conf", "drain_timeout": "5s", "log_level": "debug"}
EOF
"$GW" token create --config "$GWDIR/gateway.json" --ttl 10m 2>/dev/null \
  | "$AG" enroll - --name edge-1 --advertise-subnets 10.1.0.0/16 --advertise-domains ops.example \
      --config "$ADIR/agent.json" >"$WORK/enroll.out" 2>&1 \
  || fail "enroll: $(cat "$WORK/enroll.out")"
ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["agent_id"])' "$ADIR/agent.json")

# --- run: online within 2 s ----------------------------------------------------------
# The bound is on the agent: from its start to the gateway admitting it.
# Polling the API adds its own latency (curl and python per poll), which
# says nothing about the agent, so it is measured apart.
T0=$(date +%s%N)
start agent "$AG" run --config "$ADIR/agent.json"
WAIT_S=5 wait_for online || fail "agent not online: $(cat "$WORK/agent.log")"
SEEN=$(elapsed_ms "$T0")
CONNECTED=$(log_ms "$WORK/gw.log" "event=agent_connected agent_id=$ID") \
  || fail "no agent_connected line"
MS=$(( CONNECTED - T0 / 1000000 ))
[ "$MS" -le 2000 ] || fail "agent admitted $MS ms after its start (want <= 2000)"
ok "online $MS ms after the start (listed as online by the API after $SEEN ms)"
routed 10.1.2.3 10.1.0.0/16 || fail "10.1.2.3 not routed to the agent"
DOMAINS=$(agent_field domains)
for d in ops.example corp.example lab.example; do
  echo "$DOMAINS" | grep -q "\"$d\"" || fail "domain $d not advertised: $DOMAINS"
done
echo "$DOMAINS" | grep -q single && fail "a single-label search entry was advertised"
grep -q 'event=established' "$WORK/agent.log" || fail "no established line"
ok "subnets, configured and auto-detected domains advertised"

# --- SIGHUP: new routes on the same connection within one heartbeat ----------------
python3 - "$ADIR/agent.json" <<'EOF'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["advertise_subnets"] = ["10.9.0.0/16", "2001:db8:9::/48"]
json.dump(c, open(p, "w"))
EOF
T0=$(date +%s%N)
kill -HUP "$PID_agent"
WAIT_S=1 wait_for routed 10.9.1.1 10.9.0.0/16 \
  || fail "new routes not followed within one heartbeat: $(tail -5 "$WORK/agent.log")"
ok "reload followed after $(elapsed_ms "$T0") ms"
routed 2001:db8:9::1 2001:db8:9::/48 || fail "IPv6 route not followed"
routed 10.1.2.3 10.1.0.0/16 && fail "old route still served"
[ "$(metric atun_gateway_agent_connections_total)" = 1 ] || fail "reload reconnected"
[ "$(grep -c 'event=established' "$WORK/agent.log")" = 1 ] || fail "reload re-established"
[ "$(agent_field route_epoch)" = 2 ] || fail "epoch $(agent_field route_epoch), want 2"
ok "reload kept the connection (one connection, epoch 2)"

# --- kill -9 the gateway, restart it: the agent comes back by itself --------------
kill -KILL "$PID_gw"
wait "$PID_gw" 2>/dev/null || true
mv "$WORK/gw.log" "$WORK/gw1.log"
sleep 1
T0=$(date +%s%N)
start_gateway
WAIT_S=15 wait_for online || fail "agent did not come back: $(tail -20 "$WORK/agent.log")"
ok "back online $(elapsed_ms "$T0") ms after the restart"
grep -q 'event=gateway_dead\|event=disconnected' "$WORK/agent.log" || fail "loss not logged"
grep -q 'event=backoff delay_ms=' "$WORK/agent.log" || fail "backoff not logged"
routed 10.9.1.1 10.9.0.0/16 || fail "routes not advertised after the reconnect"

# --- revocation: refused, and the agent keeps trying without crashing -------------
api DELETE "/jet/agent-tunnel/agents/$ID" >/dev/null || fail "DELETE failed"
WAIT_S=5 wait_for grep -q 'event=refused reason=revoked' "$WORK/agent.log" \
  || fail "revocation not logged as a refusal: $(tail -10 "$WORK/agent.log")"
kill -0 "$PID_agent" || fail "agent died after its revocation"
ok "revocation logged as a refusal"

# --- SIGTERM: Goodbye, exit 0 within the drain timeout ----------------------------
# A fresh identity for the last part: the revoked one can not connect.
"$GW" token create --config "$GWDIR/gateway.json" --ttl 10m 2>/dev/null \
  | "$AG" enroll - --name edge-2 --config "$ADIR/agent.json" >/dev/null 2>&1 \
  || fail "second enrollment failed"
ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["agent_id"])' "$ADIR/agent.json")
# Stopping while refused (between attempts) is immediate and clean too.
kill -TERM "$PID_agent"
set +e
wait "$PID_agent"
RC=$?
set -e
[ "$RC" = 0 ] || fail "SIGTERM between attempts: exit $RC, want 0"
mv "$WORK/agent.log" "$WORK/agent1.log"
start agent "$AG" run --config "$ADIR/agent.json"
WAIT_S=5 wait_for online || fail "second agent not online: $(cat "$WORK/agent.log")"
T0=$(date +%s%N)
kill -TERM "$PID_agent"
set +e
wait "$PID_agent"
RC=$?
set -e
[ "$RC" = 0 ] || fail "SIGTERM: exit $RC, want 0: $(tail -5 "$WORK/agent.log")"
MS=$(elapsed_ms "$T0")
[ "$MS" -lt 5000 ] || fail "SIGTERM took $MS ms, drain timeout is 5 s"
grep -q "event=agent_goodbye agent_id=$ID" "$WORK/gw.log" || fail "gateway saw no Goodbye"
grep -q 'event=stopped' "$WORK/agent.log" || fail "no stopped line"
ok "SIGTERM: Goodbye and exit 0 after $MS ms"

# Nothing secret in any agent log.
SECRET_RE='atun1\.|BEGIN EC PRIVATE KEY|Bearer'
! grep -Eq "$SECRET_RE" "$WORK"/agent*.log "$WORK/enroll.out" || fail "a secret was logged"
ok "no secret in the logs"
