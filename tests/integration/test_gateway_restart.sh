# What the gateway keeps across a crash: an agent revoked through the API is
# still revoked after `kill -9` and a restart, a used enrollment token stays
# used, an unused one still works, and enrolled agents are still listed.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
command -v openssl >/dev/null || fail "openssl is needed to make CSRs"

API_PORT=$(free_port)
QUIC_PORT=$(free_port)
D="$WORK/state"
CA="$D/ca.crt"
P="https://127.0.0.1:$API_PORT/jet/agent-tunnel"

"$GW" init --state-dir "$D" --hostname localhost --ip 127.0.0.1 --api-listen "127.0.0.1:$API_PORT" \
  --quic-listen "127.0.0.1:$QUIC_PORT" >"$WORK/init.out"
ADMIN=$(awk '$1 == "admin_token" {print $2}' "$WORK/init.out")

req() { # req METHOD URL [BODY] [BEARER] : sets CODE, body in $WORK/body
  local args=(-s --max-time 10 --cacert "$CA" -o "$WORK/body" -w '%{http_code}' -X "$1"
              -H "Authorization: Bearer ${4:-$ADMIN}")
  [ -n "${3:-}" ] && args+=(-H "Content-Type: application/json" --data-binary "$3")
  CODE=$(curl "${args[@]}" "$2")
}
jget() { python3 -c 'import json,sys; print(eval(sys.argv[2], {"d": json.load(open(sys.argv[1]))}))' \
           "$WORK/body" "$1"; }
check_log() { # no sanitizer report in a gateway log
  ! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$1" || fail "sanitizer report in $1"
}

run_gw() { # run_gw NAME : starts the gateway, waits until it is ready
  start "$1" "$GW" run --config "$D/gateway.json"
  WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$CA" \
    "https://127.0.0.1:$API_PORT/health/ready" || { cat "$WORK/$1.log"; fail "$1 not ready"; }
}

enroll() { # enroll SECRET ID NAME : sets CODE
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout /dev/null -subj "/CN=$3" 2>/dev/null > "$WORK/$3.csr"
  local body
  body=$(python3 -c 'import json,sys; print(json.dumps({"agent_id": sys.argv[1],
    "agent_name": sys.argv[2], "csr_pem": open(sys.argv[3]).read()}))' "$2" "$3" "$WORK/$3.csr")
  req POST "$P/enroll" "$body" "$1"
}

run_gw gw1
T1=$("$GW" token create --config "$D/gateway.json" --ttl 1h 2>/dev/null | cut -d. -f2)
T2=$("$GW" token create --config "$D/gateway.json" --ttl 1h 2>/dev/null | cut -d. -f2)
T3=$("$GW" token create --config "$D/gateway.json" --ttl 1h 2>/dev/null | cut -d. -f2)
ID1=$(python3 -c 'import uuid; print(uuid.uuid4())')
ID2=$(python3 -c 'import uuid; print(uuid.uuid4())')
enroll "$T1" "$ID1" keep; [ "$CODE" = 200 ] || fail "enroll keep: $CODE"
enroll "$T2" "$ID2" gone; [ "$CODE" = 200 ] || fail "enroll gone: $CODE"
req DELETE "$P/agents/$ID2"; [ "$CODE" = 200 ] || fail "DELETE: $CODE"
ok "enrolled two agents, revoked one"

kill -KILL "$PID_gw1"
wait "$PID_gw1" 2>/dev/null || true
check_log "$WORK/gw1.log"
run_gw gw2
req GET "$P/agents/$ID2"; [ "$CODE" = 200 ] || fail "GET revoked agent: $CODE"
[ "$(jget 'd["status"]')" = revoked ] || fail "revocation lost across kill -9"
req DELETE "$P/agents/$ID2"; [ "$CODE" = 409 ] || fail "second DELETE: $CODE"
req GET "$P/agents/$ID1"; [ "$CODE" = 200 ] || fail "GET kept agent: $CODE"
[ "$(jget 'd["status"]')" = offline ] || fail "kept agent: $(jget 'd["status"]')"
ok "DELETE persists across kill -9"

enroll "$T1" "$(python3 -c 'import uuid; print(uuid.uuid4())')" again
[ "$CODE" = 401 ] || fail "a used token worked after the restart: $CODE"
enroll "$T3" "$(python3 -c 'import uuid; print(uuid.uuid4())')" later
[ "$CODE" = 200 ] || fail "an unused token failed after the restart: $CODE"
req GET "$P/agents"
[ "$(jget 'len(d["agents"])')" = 3 ] || fail "agent list after the restart"
ok "tokens keep their state across kill -9"

kill -TERM "$PID_gw2"
rc=0; wait "$PID_gw2" || rc=$?
[ "$rc" = 0 ] || fail "exit $rc after SIGTERM"
check_log "$WORK/gw2.log"
ok "clean stop"
