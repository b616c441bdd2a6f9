# Many agents on one gateway: $AGENTS identities enrolled through the API
# (CSRs made by tool_make_csrs, posted by one python process), then
# tool_many_agents runs them all in one process on one libev loop, each on
# its own QUIC connection.  The gateway must list every one online, keep
# them online for $HOLD_S seconds (several 1 s heartbeats, no reconnect),
# and report them in its online gauge.
source "$(dirname "$0")/lib.sh"

AGENTS=${ATUN_IT_AGENTS:-200}
HOLD_S=15
CSR_TOOL="$BUILD/tool_make_csrs"
AGENTS_TOOL="$BUILD/tool_many_agents"
for x in "$GW" "$CSR_TOOL" "$AGENTS_TOOL"; do [ -x "$x" ] || fail "no $x"; done

API_PORT=$(free_port)
QUIC_PORT=$(free_port)
D="$WORK/gw"
CA="$D/ca.crt"

"$GW" init --state-dir "$D" --hostname localhost --ip 127.0.0.1 \
  --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" \
  >"$WORK/init.out" 2>&1 || fail "init: $(cat "$WORK/init.out")"
ADMIN=$(awk '$1 == "admin_token" {print $2}' "$WORK/init.out")
[ -n "$ADMIN" ] || fail "no admin token"
# 1 s heartbeats (offline after 3 s of silence); room for every enrollment
# at once.
python3 - "$D/gateway.json" "$AGENTS" <<'EOF'
import json, sys
p, n = sys.argv[1], int(sys.argv[2])
c = json.load(open(p))
c["socks5"]["enabled"] = False
c["heartbeat_interval"] = "1s"
c["offline_missed_heartbeats"] = 3
c["drain_timeout"] = "2s"
c["limits"]["enroll_burst"] = n + 10
json.dump(c, open(p, "w"), indent=2)
EOF

api() { # api METHOD PATH
  curl -sS --max-time 10 --cacert "$CA" -H "Authorization: Bearer $ADMIN" -X "$1" \
    "https://127.0.0.1:$API_PORT$2"
}
# Agents the API lists as online (one page holds up to 1000).
online_count() {
  api GET "/jet/agent-tunnel/agents?limit=1000" | python3 -c '
import json, sys
print(sum(1 for a in json.load(sys.stdin)["agents"] if a["status"] == "online"))'
}
all_online() { [ "$(online_count)" = "$AGENTS" ]; }
metric() { api GET /metrics | awk -v m="$1" '$1 == m {print $2}'; }
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }

start gw "$GW" run --config "$D/gateway.json"
WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$CA" "https://127.0.0.1:$API_PORT/health/ready" ||
  fail "gateway not ready: $(cat "$WORK/gw.log")"

# --- enroll $AGENTS identities through the API --------------------------------------
t0=$(ms_now)
mkdir -p "$WORK/ids"
"$CSR_TOOL" "$WORK/ids" "$AGENTS" load >"$WORK/ids.txt" || fail "make_csrs"
python3 - "$WORK/ids.txt" "$API_PORT" "$CA" "$ADMIN" "$WORK/manifest" <<'EOF' || fail "enrollment"
import http.client, json, os, ssl, sys
ids, port, ca, admin, manifest = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
conn = http.client.HTTPSConnection("127.0.0.1", int(port), context=ctx, timeout=20)

def post(path, bearer, body):
    conn.request("POST", path, json.dumps(body),
                 {"Authorization": "Bearer " + bearer, "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status not in (200, 201):
        sys.exit("POST %s: %d %s" % (path, r.status, data[:200]))
    return json.loads(data)

with open(manifest, "w") as out:
    for line in open(ids):
        agent_id, name, key, csr = line.split()
        tok = post("/jet/agent-tunnel/tokens", admin, {"ttl": "10m"})
        secret = tok["enrollment_string"].split(".")[1]
        res = post("/jet/agent-tunnel/enroll", secret,
                   {"agent_id": agent_id, "agent_name": name, "csr_pem": open(csr).read()})
        crt = key[:-len(".key")] + ".crt"
        fd = os.open(crt, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, res["client_cert_pem"].encode())
        os.close(fd)
        out.write("%s %s\n" % (crt, key))
open(manifest + ".pin", "w").write(res["server_spki_sha256"])
EOF
PIN=$(cat "$WORK/manifest.pin")
ENROLLED=$(wc -l <"$WORK/manifest")
[ "$ENROLLED" = "$AGENTS" ] || fail "enrolled $ENROLLED of $AGENTS"
ok "$AGENTS agents enrolled through the API in $(( $(ms_now) - t0 )) ms"

# --- run them all in one process --------------------------------------------------------
t0=$(ms_now)
start load "$AGENTS_TOOL" --manifest "$WORK/manifest" --ca "$CA" --pin "$PIN" \
  --port "$QUIC_PORT" --duration 300
WAIT_S=90 wait_for all_online ||
  fail "only $(online_count) of $AGENTS online: $(tail -5 "$WORK/load.log"; tail -5 "$WORK/gw.log")"
ok "all $AGENTS agents online $(( $(ms_now) - t0 )) ms after the start"

# --- they stay online: several heartbeats, no reconnect -----------------------------------
t1=$(ms_now)
while [ $(( $(ms_now) - t1 )) -lt $(( HOLD_S * 1000 )) ]; do
  n=$(online_count)
  [ "$n" = "$AGENTS" ] || fail "$n of $AGENTS online $(( $(ms_now) - t1 )) ms into the hold"
  kill -0 "$PID_load" 2>/dev/null || fail "the load tool died: $(tail -5 "$WORK/load.log")"
  sleep 1
done
[ "$(metric 'atun_gateway_agents{status="online"}')" = "$AGENTS" ] || fail "online gauge"
conns=$(metric atun_gateway_agent_connections_total)
[ "$conns" = "$AGENTS" ] || fail "$conns connections for $AGENTS agents: some reconnected"
! grep -q "event=agent_offline" "$WORK/gw.log" || fail "an agent was reported offline"
ok "all $AGENTS agents stayed online for ${HOLD_S} s on their first connection"

kill -TERM "$PID_load"
rc=0; wait "$PID_load" || rc=$?
cat "$WORK/load.log"
[ "$rc" = 0 ] || fail "load tool exit $rc"
grep -q "^agents=$AGENTS established=$AGENTS connects=$AGENTS establishments=$AGENTS " \
  "$WORK/load.log" || fail "load tool summary"
kill -TERM "$PID_gw"
rc=0; wait "$PID_gw" || rc=$?
[ "$rc" = 0 ] || fail "gateway exit $rc after SIGTERM"
! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$WORK/gw.log" "$WORK/load.log" ||
  fail "sanitizer report"
ok "load tool and gateway stopped cleanly"
