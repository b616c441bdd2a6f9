# The gateway with real agents over QUIC on loopback: enrollment with
# `atun-agent enroll`, the agent online with its routes, back online after a
# gateway crash, a newer connection replacing an older one, revocation
# closing the live connection and refusing every later handshake (also
# after a restart), a certificate from another CA refused with a log line
# and a metric, the registry bound, and a drain on SIGTERM.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"

API_PORT=$(free_port)
QUIC_PORT=$(free_port)
D="$WORK/gw"
CA="$D/ca.crt"
B="https://127.0.0.1:$API_PORT"
P="$B/jet/agent-tunnel"

"$GW" init --state-dir "$D" --hostname localhost --ip 127.0.0.1 \
  --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" >"$WORK/init.out"
ADMIN=$(awk '$1 == "admin_token" {print $2}' "$WORK/init.out")
# Short heartbeats so that an agent notices a dead gateway in seconds; a
# short drain bound for the SIGTERM case; room for one agent in the registry.
python3 - "$D/gateway.json" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["heartbeat_interval"] = "1s"
cfg["drain_timeout"] = "5s"
cfg["limits"]["max_agents"] = 1
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
EOF

req() { # req METHOD URL [BODY] : sets CODE, body in $WORK/body
  local args=(-s --max-time 10 --cacert "$CA" -o "$WORK/body" -w '%{http_code}' -X "$1"
              -H "Authorization: Bearer $ADMIN")
  [ -n "${3:-}" ] && args+=(-H "Content-Type: application/json" --data-binary "$3")
  CODE=$(curl "${args[@]}" "$2")
}
jget() { python3 -c 'import json,sys; print(eval(sys.argv[2], {"d": json.load(open(sys.argv[1]))}))' \
           "$WORK/body" "$1"; }
agent_field() { # agent_field ID EXPR : evaluates EXPR over GET agents/ID
  req GET "$P/agents/$1" >/dev/null && [ "$CODE" = 200 ] && jget "$2"
}
is_online() { [ "$(agent_field "$1" 'd["status"]')" = online ]; }
metric() { # metric NAME{LABELS} : prints the value
  curl -s --max-time 5 --cacert "$CA" -H "Authorization: Bearer $ADMIN" "$B/metrics" |
    awk -v k="$1" '$1 == k {print $2}'
}
check_log() {
  ! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$1" || fail "sanitizer report in $1"
}
kill9() { kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }

run_gw() { # run_gw NAME
  start "$1" "$GW" run --config "$D/gateway.json"
  WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$CA" "$B/health/ready" ||
    { cat "$WORK/$1.log"; fail "$1 not ready"; }
}

enroll_agent() { # enroll_agent DIR NAME [options...] : prints the agent id
  local dir="$1" name="$2"; shift 2
  mkdir -p "$dir"
  "$GW" token create --config "$D/gateway.json" --ttl 10m 2>/dev/null |
    "$AG" enroll - --name "$name" --config "$dir/agent.json" "$@" >"$dir/enroll.out" 2>&1 ||
    { cat "$dir/enroll.out"; fail "enroll $name"; }
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["agent_id"])' "$dir/agent.json"
}

run_gw gw1

# --- enroll and connect ----------------------------------------------------------------
ID=$(enroll_agent "$WORK/a1" site-a --advertise-subnets 10.1.0.0/16,fd00:1::/48 \
     --advertise-domains corp.example)
for f in "$WORK"/a1/*.key "$WORK"/a1/*.crt; do
  [ "$(stat -c %a "$f")" = 600 ] || fail "$f not 0600"
done
t0=$(ms_now)
start a1 "$AG" run --config "$WORK/a1/agent.json"
WAIT_S=5 wait_for is_online "$ID" || { cat "$WORK/a1.log"; fail "agent not online"; }
elapsed=$(( $(ms_now) - t0 ))
echo "agent online after ${elapsed} ms"
[ "$elapsed" -le 2000 ] || fail "agent online only after $elapsed ms (wanted <= 2 s)"
[ "$(agent_field "$ID" 'sorted(d["subnets"])')" = "['10.1.0.0/16', 'fd00:1::/48']" ] ||
  fail "subnets: $(agent_field "$ID" 'd["subnets"]')"
[ "$(agent_field "$ID" 'd["domains"][0]["name"]')" = corp.example ] || fail "domains"
[ "$(agent_field "$ID" 'd["connected"]')" = True ] || fail "connected"
req POST "$P/agents/resolve-target" '{"target":"10.1.200.9"}'
[ "$(jget 'd["candidates"][0]["agent_id"]')" = "$ID" ] &&
  [ "$(jget 'd["candidates"][0]["route"]')" = 10.1.0.0/16 ] || fail "resolve 10.1.200.9"
req POST "$P/agents/resolve-target" '{"target":"db.CORP.example."}'
[ "$(jget 'd["candidates"][0]["match"]')" = domain ] || fail "resolve by domain"
req POST "$P/agents/resolve-target" '{"target":"db.badcorp.example"}'
[ "$(jget 'len(d["candidates"])')" = 0 ] || fail "suffix matched off a label boundary"
[ "$(metric 'atun_gateway_agents{status="online"}')" = 1 ] || fail "online metric"
grep -q "event=agent_connected agent_id=$ID" "$WORK/gw1.log" || fail "no connect log line"
ok "agent enrolled and online with its routes"

# --- a newer connection of the same agent replaces the older one ------------------------------
start a1b "$AG" run --config "$WORK/a1/agent.json"
WAIT_S=10 wait_for grep -q "event=agent_connection_replaced agent_id=$ID" "$WORK/gw1.log" ||
  fail "no replacement"
kill9 "$PID_a1b"
WAIT_S=20 wait_for is_online "$ID" || fail "agent not online after the replacement"
[ "$(metric atun_gateway_agent_connections_replaced_total)" -ge 1 ] || fail "replaced metric"
ok "a newer connection replaces the older one"

# --- gateway crash: the agent comes back -----------------------------------------------------------
kill9 "$PID_gw1"
check_log "$WORK/gw1.log"
run_gw gw2
WAIT_S=30 wait_for is_online "$ID" || { tail "$WORK/a1.log"; fail "agent not back"; }
ok "agent back online after kill -9 of the gateway"

# --- revocation -------------------------------------------------------------------------------------
req DELETE "$P/agents/$ID"; [ "$CODE" = 200 ] || fail "DELETE $CODE"
t0=$(ms_now)
WAIT_S=1 wait_for grep -q "event=agent_disconnected agent_id=$ID.*code=revoked" "$WORK/gw2.log" ||
  fail "live connection not closed within 1 s"
echo "connection closed $(( $(ms_now) - t0 )) ms after DELETE returned"
WAIT_S=30 wait_for grep -q "event=handshake_refused reason=revoked agent_id=$ID" "$WORK/gw2.log" ||
  fail "reconnect not refused"
[ "$(agent_field "$ID" 'd["status"]')" = revoked ] || fail "status after DELETE"
[ "$(metric 'atun_gateway_handshake_failures_total{reason="revoked"}')" -ge 1 ] ||
  fail "revoked handshake not counted"
kill9 "$PID_a1"
kill9 "$PID_gw2"
check_log "$WORK/gw2.log"
run_gw gw3
start a1c "$AG" run --config "$WORK/a1/agent.json"
WAIT_S=20 wait_for grep -q "event=handshake_refused reason=revoked agent_id=$ID" "$WORK/gw3.log" ||
  fail "revoked agent not refused after a restart"
! grep -q "event=agent_connected agent_id=$ID" "$WORK/gw3.log" || fail "revoked agent connected"
kill9 "$PID_a1c"
ok "revocation closes the connection and refuses reconnects, across restarts"

# --- a certificate from another CA ----------------------------------------------------------------------
D2="$WORK/other"
API2=$(free_port)
"$GW" init --state-dir "$D2" --hostname localhost --ip 127.0.0.1 \
  --api-listen "127.0.0.1:$API2" --quic-listen "127.0.0.1:$(free_port)" >/dev/null
start other "$GW" run --config "$D2/gateway.json"
WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$D2/ca.crt" "https://127.0.0.1:$API2/health/ready" ||
  fail "second gateway not ready"
mkdir -p "$WORK/a2"
"$GW" token create --config "$D2/gateway.json" 2>/dev/null |
  "$AG" enroll - --name rogue --config "$WORK/a2/agent.json" >/dev/null 2>&1 || fail "enroll rogue"
kill -TERM "$PID_other"
# The rogue agent trusts this gateway (its CA and server pin) but holds a
# client certificate of the other CA.
cp "$CA" "$WORK/a2/this-ca.crt"
python3 - "$WORK/a2/agent.json" "$WORK/a1/agent.json" "$WORK/a2/this-ca.crt" "$QUIC_PORT" <<'EOF'
import json, sys
rogue, good = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
rogue["ca_file"] = sys.argv[3]
rogue["server_spki_sha256"] = good["server_spki_sha256"]
rogue["gateway"] = "localhost:" + sys.argv[4]
json.dump(rogue, open(sys.argv[1], "w"), indent=2)
EOF
before=$(metric 'atun_gateway_handshake_failures_total{reason="unknown_ca"}')
start a2 "$AG" run --config "$WORK/a2/agent.json"
WAIT_S=20 wait_for grep -q "event=handshake_refused reason=unknown_ca" "$WORK/gw3.log" ||
  { tail "$WORK/a2.log"; fail "foreign certificate not refused with a log line"; }
after=$(metric 'atun_gateway_handshake_failures_total{reason="unknown_ca"}')
[ "$after" -gt "$before" ] || fail "unknown_ca not counted ($before -> $after)"
kill9 "$PID_a2"
ok "a certificate from another CA is refused, logged and counted"

# --- the registry bound: full refuses, records of agents that left make room -----------------
ID3=$(enroll_agent "$WORK/a3" site-c --advertise-subnets 10.3.0.0/16)
start a3 "$AG" run --config "$WORK/a3/agent.json"
WAIT_S=10 wait_for is_online "$ID3" || fail "site-c not online"
ID4=$(enroll_agent "$WORK/a4" site-d --advertise-subnets 10.4.0.0/16)
start a4 "$AG" run --config "$WORK/a4/agent.json"
WAIT_S=10 wait_for grep -q "event=agent_refused agent_id=$ID4" "$WORK/gw3.log" ||
  fail "a connection beyond max_agents was not refused"
kill9 "$PID_a4"
kill -TERM "$PID_a3"
wait "$PID_a3" 2>/dev/null || true
WAIT_S=10 wait_for grep -q "event=agent_disconnected agent_id=$ID3" "$WORK/gw3.log" ||
  fail "site-c did not leave"
start a4b "$AG" run --config "$WORK/a4/agent.json"
WAIT_S=10 wait_for is_online "$ID4" || fail "site-d not online after site-c left"
grep -q "event=registry_evicted" "$WORK/gw3.log" || fail "no eviction logged"
ok "the registry bound refuses, then evicts records of agents that left"

# --- SIGTERM drains: Goodbye, agents leave, exit 0 ----------------------------------------------------------
t0=$(ms_now)
kill -TERM "$PID_gw3"
rc=0; wait "$PID_gw3" || rc=$?
[ "$rc" = 0 ] || fail "exit $rc after SIGTERM"
took=$(( $(ms_now) - t0 ))
echo "drained and stopped in $took ms"
[ "$took" -le 7000 ] || fail "drain took $took ms (bound 5 s)"
grep -q "event=agent_disconnected agent_id=$ID4" "$WORK/gw3.log" || fail "agent did not leave"
check_log "$WORK/gw3.log"
ok "SIGTERM drains and exits 0"
