# `atun-gateway status` and `atun-agent status`: what they print while both
# run (agent name, routes, "online", certificate expiry, listeners, last
# errors), --json, and that each says "not running" with exit 4 when its
# daemon stopped, was killed, or never ran.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"

SOCKS_PORT=$(free_port)
FWD_PORT=$(free_port)
ACFG="$WORK/a1/agent.json"

gw_init
python3 - "$GCFG" "$SOCKS_PORT" "$FWD_PORT" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["heartbeat_interval"] = "1s"
cfg["socks5"] = {"enabled": True, "listen": "127.0.0.1:" + sys.argv[2], "users": []}
cfg["forwards"] = [{"listen": "127.0.0.1:" + sys.argv[3], "target": "127.0.0.1",
                    "port": 22, "agent": "site-a"}]
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
# status_of gw|agent : runs the status command, output in $WORK/st.out, exit code in $RC
status_of() {
  RC=0
  if [ "$1" = gw ]; then "$GW" status --config "$GCFG" >"$WORK/st.out" 2>&1 || RC=$?
  else "$AG" status --config "$ACFG" >"$WORK/st.out" 2>&1 || RC=$?; fi
}
expect() { # expect TEXT... : every TEXT (a grep -E pattern) is in $WORK/st.out
  local t
  for t in "$@"; do grep -Eq -- "$t" "$WORK/st.out" || { cat "$WORK/st.out"; fail "status lacks '$t'"; }; done
}

# --- before anything runs ----------------------------------------------------------------------
status_of gw
[ "$RC" = 4 ] || { cat "$WORK/st.out"; fail "gateway status before the first start: exit $RC, not 4"; }
expect "not running"
"$GW" status >/dev/null 2>&1 && fail "gateway status without --config succeeded"
RC=0; "$GW" status --config "$WORK/nope.json" >/dev/null 2>&1 || RC=$?
[ "$RC" = 2 ] || fail "gateway status with a missing config: exit $RC, not 2"
"$GW" status --help | grep -q "Exit codes" || fail "gateway status --help lacks the exit codes"
"$GW" --help | grep -q "status" || fail "gateway --help lacks status"
ok "gateway status: exit 4 before the first start, 2 on a bad config"

start gw "$GW" run --config "$GCFG"
WAIT_S=20 wait_for curl -sf --max-time 2 --cacert "$CA" "$B/health/ready" ||
  { cat "$WORK/gw.log"; fail "gateway not ready"; }
mkdir -p "$WORK/a1"
"$GW" token create --config "$GCFG" --ttl 10m 2>/dev/null |
  "$AG" enroll - --name site-a --config "$ACFG" \
    --advertise-subnets 127.0.0.0/8,fd00:77::/48 >"$WORK/a1/enroll.out" 2>&1 ||
  { cat "$WORK/a1/enroll.out"; fail "enroll"; }
status_of agent
[ "$RC" = 4 ] || { cat "$WORK/st.out"; fail "agent status before the first start: exit $RC, not 4"; }
expect "not running"
"$AG" status --help | grep -q "exit codes" || fail "agent status --help lacks the exit codes"
ok "agent status: exit 4 before the first start"

start a1 "$AG" run --config "$ACFG"
WAIT_S=20 wait_for grep -q "event=routes_advertised" "$WORK/gw.log" ||
  { cat "$WORK/a1.log"; fail "agent routes not advertised"; }

# --- both running ----------------------------------------------------------------------------------
# The agent writes within a second of a change; the gateway every 5 s.
WAIT_S=10 wait_for sh -c "'$AG' status --config '$ACFG' | grep -q 'connection  *established'" ||
  { "$AG" status --config "$ACFG"; fail "agent status never showed established"; }
status_of agent
[ "$RC" = 0 ] || { cat "$WORK/st.out"; fail "agent status exit $RC while running"; }
expect "^agent +running \(pid $PID_a1\)" "^name +site-a" "^gateway +localhost:$QUIC_PORT" \
  "^connection +established since" "epoch 1: subnets 127\.0\.0\.0/8 fd00:77::/48" \
  "^streams +0 active" "^certificate +expires 20[0-9-]+T[0-9:]+Z \(in [0-9]+ days\)"
cp "$WORK/st.out" "$WORK/agent-status.txt"
ok "agent status: running, established, routes with epoch, certificate expiry"

WAIT_S=10 wait_for sh -c "'$GW' status --config '$GCFG' | grep -q '1 online'" ||
  { "$GW" status --config "$GCFG"; fail "gateway status never showed the agent online"; }
status_of gw
[ "$RC" = 0 ] || { cat "$WORK/st.out"; fail "gateway status exit $RC while running"; }
expect "^gateway +running \(pid $PID_gw\)" "^agents +1 online, 0 offline, 0 revoked" \
  "^ +site-a +online " "routes: 127\.0\.0\.0/8 fd00:77::/48" \
  "^ca +expires 20[0-9-]+T[0-9:]+Z \(in [0-9]+ days\)" "^server cert +expires .*\(in [0-9]+ days\)" \
  "socks5 +127\.0\.0\.1:$SOCKS_PORT" "forward +127\.0\.0\.1:$FWD_PORT -> 127\.0\.0\.1:22 via site-a" \
  "^sessions +1 agent connections"
cp "$WORK/st.out" "$WORK/gateway-status.txt"
"$GW" status --config "$GCFG" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["agents"][0]["name"] == "site-a" and d["agents_online"] == 1' ||
  fail "gateway status --json"
"$AG" status --config "$ACFG" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["state"] == "established" and d["route_epoch"] == 1' ||
  fail "agent status --json"
grep -q "$ADMIN" "$D/status.json" && fail "the admin token is in the status file"
[ "$(stat -c %a "$D/status.json")" = 600 ] || fail "gateway status.json not mode 0600"
[ "$(stat -c %a "$WORK/a1/status.json")" = 600 ] || fail "agent status.json not mode 0600"
ok "gateway status: agent online with routes, cert expiry, listeners; --json parses; files 0600"

# --- the last errors are bounded: ten refused reloads, eight shown -----------------------------
cp "$GCFG" "$WORK/good.json"
echo '{"log_level": "loud"}' >"$GCFG"
for _ in $(seq 10); do kill -HUP "$PID_gw"; sleep 0.1; done
ten_refused() { [ "$(grep -c 'event=config_reload_failed' "$WORK/gw.log")" -ge 10 ]; }
WAIT_S=5 wait_for ten_refused ||
  fail "10 reloads not refused"
cp "$WORK/good.json" "$GCFG"
WAIT_S=8 wait_for sh -c "'$GW' status --config '$GCFG' | grep -Eq 'last warnings and errors \(8 shown, (1[0-9]|[2-9][0-9]) since start\)'" ||
  { "$GW" status --config "$GCFG" | tail -12; fail "the error list is not cut at 8"; }
status_of gw
[ "$(grep -c 'event=config_reload_failed.*log_level' "$WORK/st.out")" = 8 ] ||
  { cat "$WORK/st.out"; fail "not the 8 latest errors"; }
ok "gateway status keeps the 8 latest of 10 errors"

# --- revoked: both sides show it, with the errors that came with it ----------------------------
AID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["agent_id"])' "$ACFG")
curl -sf --max-time 5 --cacert "$CA" -H "Authorization: Bearer $ADMIN" -X DELETE \
  "$B/jet/agent-tunnel/agents/$AID" >/dev/null || fail "revoke"
WAIT_S=12 wait_for sh -c "'$GW' status --config '$GCFG' | grep -q '0 online, 0 offline, 1 revoked'" ||
  { "$GW" status --config "$GCFG"; fail "gateway status never showed the revocation"; }
WAIT_S=10 wait_for sh -c "'$AG' status --config '$ACFG' | grep -q 'event=refused'" ||
  { "$AG" status --config "$ACFG"; fail "agent status shows no refusal among its last errors"; }
status_of agent
expect "^last warnings and errors \([1-9][0-9]* shown" "reason=revoked"
ok "revocation: gateway status counts it, agent status lists the refusal"

# --- listeners beyond the 64 the file lists are counted ------------------------------------------
python3 - "$GCFG" <<'PY'
import json, socket, sys
cfg = json.load(open(sys.argv[1]))
# All 69 held open while choosing: a port closed at once can come back.
held = [socket.socket() for _ in range(69)]
for s in held: s.bind(("127.0.0.1", 0))
ports = [s.getsockname()[1] for s in held]
for s in held: s.close()
cfg["forwards"] += [{"listen": "127.0.0.1:%d" % p, "target": "127.0.0.1", "port": 22}
                    for p in ports]
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
kill -HUP "$PID_gw"
WAIT_S=10 wait_for sh -c "'$GW' status --config '$GCFG' | grep -q '(7 more not listed)'" ||
  { "$GW" status --config "$GCFG" | grep -c forward; fail "71 listeners: not 64 listed and 7 counted"; }
status_of gw
[ "$(grep -Ec '^ *(listeners +)?(forward|socks5) ' "$WORK/st.out")" = 64 ] ||
  fail "not 64 listeners listed"
ok "gateway status lists 64 of 71 listeners and counts the rest"

# --- stopped, killed ----------------------------------------------------------------------------
kill -TERM "$PID_a1"
wait "$PID_a1" || true
status_of agent
[ "$RC" = 4 ] || { cat "$WORK/st.out"; fail "agent status after SIGTERM: exit $RC, not 4"; }
expect "^agent +NOT RUNNING \(pid $PID_a1\): stopped"
ok "agent status after a stop: NOT RUNNING: stopped, exit 4"

start a2 "$AG" run --config "$ACFG"
WAIT_S=10 wait_for sh -c "'$AG' status --config '$ACFG' | grep -q 'running (pid $PID_a2)'" ||
  fail "agent status does not show the new process"
kill -KILL "$PID_a2"
wait "$PID_a2" 2>/dev/null || true
status_of agent
[ "$RC" = 4 ] || { cat "$WORK/st.out"; fail "agent status after kill -9: exit $RC, not 4"; }
expect "NOT RUNNING \(pid $PID_a2\): process gone"
ok "agent status after kill -9: NOT RUNNING: process gone, exit 4"

kill -TERM "$PID_gw"
wait "$PID_gw" || fail "gateway exit $?"
status_of gw
[ "$RC" = 4 ] || { cat "$WORK/st.out"; fail "gateway status after SIGTERM: exit $RC, not 4"; }
expect "^gateway +NOT RUNNING \(pid $PID_gw\): stopped"
ok "gateway status after a stop: NOT RUNNING: stopped, exit 4"
# --- a hung writer and a broken file ---------------------------------------------------------
# A live process that stopped writing: not responding.  Forged from the last
# file with the pid of a sleeping process and an update 100 s old.
sleep 60 & SLEEPER=$!
PIDS+=("$SLEEPER")
python3 - "$WORK/a1/status.json" "$SLEEPER" <<'PY'
import json, sys, time
d = json.load(open(sys.argv[1]))
d["pid"], d["state"], d["updated_unix"] = int(sys.argv[2]), "established", int(time.time()) - 100
json.dump(d, open(sys.argv[1], "w"))
PY
status_of agent
[ "$RC" = 4 ] || { cat "$WORK/st.out"; fail "agent status of a hung writer: exit $RC, not 4"; }
expect "NOT RUNNING \(pid $SLEEPER\): not responding"
echo '{"pid": ' >"$WORK/a1/status.json"
status_of agent
[ "$RC" = 1 ] || { cat "$WORK/st.out"; fail "agent status of a broken file: exit $RC, not 1"; }
expect "is not a status file"
echo '[]' >"$D/status.json"
status_of gw
[ "$RC" = 1 ] || { cat "$WORK/st.out"; fail "gateway status of a broken file: exit $RC, not 1"; }
ok "status: a hung writer is NOT RUNNING (exit 4), a broken file exit 1"

! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$WORK"/*.log || fail "sanitizer report"
if [ -n "${OPS_STATUS_SAMPLES:-}" ]; then
  cp "$WORK/agent-status.txt" "$WORK/gateway-status.txt" "$OPS_STATUS_SAMPLES/"
fi
