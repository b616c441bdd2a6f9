# The control plane refusing what it must, against the real daemons on
# loopback, while one good agent stays online throughout:
#   - an expired agent certificate (signed by the gateway's own CA),
#   - a client offering the wrong ALPN (atun/1) with a valid certificate,
#   - an agent whose server pin does not match the gateway (the agent
#     refuses, the gateway keeps serving);
# each with its log line, the first two with their handshake-failure
# metric.  Then the good agent is killed (SIGKILL) and must be marked
# offline within the heartbeat timeout (1 s heartbeat x 3) plus 1 s.
source "$(dirname "$0")/lib.sh"

EXPIRED_TOOL="$BUILD/tool_expired_cert"
AGENTS_TOOL="$BUILD/tool_many_agents"
for x in "$GW" "$AG" "$EXPIRED_TOOL" "$AGENTS_TOOL"; do [ -x "$x" ] || fail "no $x"; done

API_PORT=$(free_port)
QUIC_PORT=$(free_port)
D="$WORK/gw"
CA="$D/ca.crt"
HEARTBEAT_S=1
MISSED=3

"$GW" init --state-dir "$D" --hostname localhost --ip 127.0.0.1 \
  --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" \
  >"$WORK/init.out" 2>&1 || fail "init: $(cat "$WORK/init.out")"
ADMIN=$(awk '$1 == "admin_token" {print $2}' "$WORK/init.out")
[ -n "$ADMIN" ] || fail "no admin token"
python3 - "$D/gateway.json" "$HEARTBEAT_S" "$MISSED" <<'EOF'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["socks5"]["enabled"] = False
c["heartbeat_interval"] = sys.argv[2] + "s"
c["offline_missed_heartbeats"] = int(sys.argv[3])
c["drain_timeout"] = "2s"
json.dump(c, open(p, "w"), indent=2)
EOF

api() { # api METHOD PATH
  curl -sS --max-time 5 --cacert "$CA" -H "Authorization: Bearer $ADMIN" -X "$1" \
    "https://127.0.0.1:$API_PORT$2"
}
status_of() { api GET "/jet/agent-tunnel/agents/$1" | grep -o '"status": *"[a-z]*"' | cut -d'"' -f4; }
is_online() { [ "$(status_of "$1")" = online ]; }
metric() { api GET /metrics | awk -v m="$1" '$1 == m {print $2}'; }
hs_failures() { local v; v=$(metric "atun_gateway_handshake_failures_total{reason=\"$1\"}"); echo "${v:-0}"; }
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }
kill9() { kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
check_log() {
  ! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$1" || fail "sanitizer report in $1"
}
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

enroll_agent() { # enroll_agent DIR NAME : prints the agent id
  mkdir -p "$1"
  "$GW" token create --config "$D/gateway.json" --ttl 10m 2>/dev/null |
    "$AG" enroll - --name "$2" --advertise-subnets 10.77.0.0/16 --config "$1/agent.json" \
      >"$1/enroll.out" 2>&1 || fail "enroll $2: $(cat "$1/enroll.out")"
  json_field "$1/agent.json" agent_id
}

# The good agent must be online at every checkpoint, on its first connection.
good_still_online() {
  is_online "$GOOD" || fail "the good agent went offline ($1): $(tail -5 "$WORK/good.log")"
  [ "$(grep -c 'event=established' "$WORK/good.log")" = 1 ] ||
    fail "the good agent reconnected ($1)"
  kill -0 "$PID_gw" 2>/dev/null || fail "the gateway died ($1)"
}

start gw "$GW" run --config "$D/gateway.json"
WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$CA" "https://127.0.0.1:$API_PORT/health/ready" ||
  fail "gateway not ready: $(cat "$WORK/gw.log")"

GOOD=$(enroll_agent "$WORK/good" good-agent)
start good "$AG" run --config "$WORK/good/agent.json"
WAIT_S=10 wait_for is_online "$GOOD" || fail "good agent not online: $(cat "$WORK/good.log")"
ok "good agent $GOOD online"

# --- (a) an expired certificate from the right CA ------------------------------------
EXP_DIR="$WORK/expired"
EXP_ID=$(enroll_agent "$EXP_DIR" expired-agent)
EXP_CERT=$(json_field "$EXP_DIR/agent.json" cert_file)
EXP_KEY=$(json_field "$EXP_DIR/agent.json" key_file)
"$EXPIRED_TOOL" "$CA" "$D/ca.key" "$EXP_CERT" "$EXP_KEY" "$EXP_DIR/expired.crt" ||
  fail "could not sign the expired certificate"
cp "$EXP_DIR/expired.crt" "$EXP_CERT"
before=$(hs_failures expired)
start expired "$AG" run --config "$EXP_DIR/agent.json"
WAIT_S=15 wait_for grep -q "event=handshake_refused reason=expired" "$WORK/gw.log" ||
  fail "expired certificate not refused with a log line: $(tail -5 "$WORK/gw.log")"
WAIT_S=5 wait_for grep -q "event=refused reason=" "$WORK/expired.log" ||
  fail "the expired agent did not log its refusal: $(tail -5 "$WORK/expired.log")"
after=$(hs_failures expired)
[ "$after" -gt "$before" ] || fail "expired not counted ($before -> $after)"
[ "$(status_of "$EXP_ID")" != online ] || fail "expired agent online"
! grep -q "event=agent_connected agent_id=$EXP_ID" "$WORK/gw.log" || fail "expired agent admitted"
kill9 "$PID_expired"
good_still_online "after the expired certificate"
ok "expired certificate refused, logged ($(grep -m1 -o 'event=handshake_refused reason=expired[^ ]*' "$WORK/gw.log")) and counted ($before -> $after)"

# --- (b) the wrong ALPN, with a valid enrolled certificate ----------------------------
ALPN_DIR="$WORK/alpn"
ALPN_ID=$(enroll_agent "$ALPN_DIR" alpn-agent)
echo "$(json_field "$ALPN_DIR/agent.json" cert_file) $(json_field "$ALPN_DIR/agent.json" key_file)" \
  >"$ALPN_DIR/manifest"
PIN=$(json_field "$ALPN_DIR/agent.json" server_spki_sha256)
before=$(hs_failures alpn_mismatch)
rc=0
"$AGENTS_TOOL" --manifest "$ALPN_DIR/manifest" --ca "$CA" --pin "$PIN" --port "$QUIC_PORT" \
  --alpn atun/1 --once --duration 20 >"$WORK/alpn.out" 2>&1 || rc=$?
cat "$WORK/alpn.out"
[ "$rc" = 0 ] || fail "the atun/1 client was not refused (exit $rc)"
WAIT_S=5 wait_for grep -q "event=handshake_refused reason=alpn_mismatch" "$WORK/gw.log" ||
  fail "wrong ALPN not refused with a log line: $(tail -5 "$WORK/gw.log")"
after=$(hs_failures alpn_mismatch)
[ "$after" -gt "$before" ] || fail "alpn_mismatch not counted ($before -> $after)"
! grep -q "event=agent_connected agent_id=$ALPN_ID" "$WORK/gw.log" || fail "atun/1 client admitted"
good_still_online "after the wrong ALPN"
ok "wrong ALPN refused, logged and counted ($before -> $after)"

# --- (c) a wrong server pin: the agent refuses the gateway ----------------------------
PIN_DIR="$WORK/pin"
PIN_ID=$(enroll_agent "$PIN_DIR" pin-agent)
python3 - "$PIN_DIR/agent.json" <<'EOF'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
pin = c["server_spki_sha256"]
# Flip the last hex digit: a pin of some other key.
c["server_spki_sha256"] = pin[:-1] + ("0" if pin[-1] != "0" else "1")
json.dump(c, open(p, "w"), indent=2)
EOF
start pin "$AG" run --config "$PIN_DIR/agent.json"
WAIT_S=15 wait_for grep -q "event=refused reason=pin_mismatch" "$WORK/pin.log" ||
  fail "pin mismatch not logged by the agent: $(tail -5 "$WORK/pin.log")"
! grep -q "event=agent_connected agent_id=$PIN_ID" "$WORK/gw.log" || fail "pin agent admitted"
[ "$(status_of "$PIN_ID")" != online ] || fail "pin agent online"
kill9 "$PID_pin"
good_still_online "after the wrong pin"
ok "wrong pin refused by the agent ($(grep -m1 -o 'event=refused reason=pin_mismatch[^ ]*' "$WORK/pin.log"))"

# --- kill -9 the good agent: offline within the heartbeat timeout -----------------------
LIMIT_MS=$(( (HEARTBEAT_S * MISSED + 1) * 1000 ))
t0=$(ms_now)
kill9 "$PID_good"
while is_online "$GOOD"; do
  [ $(( $(ms_now) - t0 )) -le $(( LIMIT_MS + 2000 )) ] || break
  sleep 0.1
done
took=$(( $(ms_now) - t0 ))
[ "$(status_of "$GOOD")" != online ] || fail "killed agent still online after $took ms"
echo "killed agent listed as $(status_of "$GOOD") after $took ms"
[ "$took" -le "$LIMIT_MS" ] || fail "offline only after $took ms (bound $LIMIT_MS ms)"
grep -q "event=agent_offline agent_id=$GOOD" "$WORK/gw.log" || fail "no agent_offline line"
[ "$(metric 'atun_gateway_agents{status="online"}')" = 0 ] || fail "online gauge not 0"
ok "killed agent offline after $took ms (bound $LIMIT_MS ms)"

# For the record: every refusal the gateway logged during the test.
grep -o "event=handshake_refused.*" "$WORK/gw.log" | sort | uniq -c || true
kill -TERM "$PID_gw"
rc=0; wait "$PID_gw" || rc=$?
[ "$rc" = 0 ] || fail "gateway exit $rc after SIGTERM"
check_log "$WORK/gw.log"
