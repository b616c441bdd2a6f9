# SIGHUP keeps sessions alive while routes and listeners change.  Two
# connections stay open across both reloads, sending data all along: one
# through SOCKS5, one through a forward that the gateway's reload removes.
# The gateway reload adds a forward and removes another; the agent reload
# changes advertise_subnets.  Afterwards: both transfers byte-exact, the
# agent still on its first connection, the new forward works, the removed
# one refuses, the new route is in the API.  Then a broken config is
# refused whole and a forward on a taken port is skipped.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"

SOCKS_PORT=$(free_port)
FWD_A=$(free_port)
FWD_B=$(free_port)
SUM_PORT=$(free_port)

gw_init
# gw_config FORWARD_PORT... : SOCKS5 on, one forward to the sum target per port
gw_config() {
  python3 - "$D/gateway.json" "$SOCKS_PORT" "$SUM_PORT" "$@" <<'PY'
import json, sys
path, socks, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = json.load(open(path))
cfg["heartbeat_interval"] = "1s"
cfg["socks5"] = {"enabled": True, "listen": "127.0.0.1:" + socks, "users": []}
cfg["forwards"] = [{"listen": "127.0.0.1:" + p, "target": "127.0.0.1", "port": target}
                   for p in sys.argv[4:]]
json.dump(cfg, open(path + ".new", "w"), indent=2)
PY
  mv "$D/gateway.json.new" "$D/gateway.json"
}
gw_config "$FWD_A"

# hold.py socks|direct PORT NAME : sends random data at ~4 MB/s; touches
# $WORK/NAME.started after 1 MB, goes on until $WORK/go exists, sends one
# more MB, shuts down its write side and checks the "length sha256" answer.
# Bounded: 90 s in all.
cat >"$WORK/hold.py" <<'PY'
import hashlib, os, socket, struct, sys, time
mode, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
work = os.environ["WORK"]
deadline = time.monotonic() + 90
s = socket.create_connection(("127.0.0.1", port), timeout=30)
if mode == "socks":
    s.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") +
              struct.pack(">H", int(os.environ["SUM_PORT"])))
    r = b""
    while len(r) < 12: r += s.recv(12 - len(r))
    assert r[:2] == b"\x05\x00" and r[3] == 0, r
h, n, after = hashlib.sha256(), 0, None
while time.monotonic() < deadline:
    chunk = os.urandom(65536)
    s.sendall(chunk)
    h.update(chunk); n += len(chunk)
    if n >= 1 << 20 and not os.path.exists(f"{work}/{name}.started"):
        open(f"{work}/{name}.started", "w").close()
    if after is None and os.path.exists(f"{work}/go"): after = n + (1 << 20)
    if after is not None and n >= after: break
    time.sleep(0.016)
else:
    sys.exit("hold: deadline")
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(65536)
    if not b: break
    got += b
want = b"%d %s" % (n, h.hexdigest().encode())
print(name, n, "bytes", "ok" if got == want else "MISMATCH %r" % got)
sys.exit(0 if got == want else 1)
PY
# once PORT : one short connection through a forward; checks the answer
once() {
  python3 - "$1" <<'PY'
import hashlib, os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
data = os.urandom(100000)
s.sendall(data); s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(65536)
    if not b: break
    got += b
sys.exit(0 if got == b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()) else 1)
PY
}
refused() { # refused PORT : exit 0 if a TCP connect is refused
  python3 -c 'import socket,sys
try: socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
except ConnectionRefusedError: sys.exit(0)
sys.exit(1)' "$1"
}
agents_json() {
  curl -s --max-time 5 --cacert "$CA" -H "Authorization: Bearer $ADMIN" "$B/jet/agent-tunnel/agents"
}
export WORK SUM_PORT

sum_target "$SUM_PORT"
start gw "$GW" run --config "$D/gateway.json"
WAIT_S=20 wait_for curl -sf --max-time 2 --cacert "$CA" "$B/health/ready" ||
  { cat "$WORK/gw.log"; fail "gateway not ready"; }

mkdir -p "$WORK/a1"
"$GW" token create --config "$D/gateway.json" --ttl 10m 2>/dev/null |
  "$AG" enroll - --name site-a --config "$WORK/a1/agent.json" \
    --advertise-subnets 127.0.0.0/8 >"$WORK/a1/enroll.out" 2>&1 ||
  { cat "$WORK/a1/enroll.out"; fail "enroll"; }
python3 - "$WORK/a1/agent.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["deny"] = []
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
start a1 "$AG" run --config "$WORK/a1/agent.json"
WAIT_S=20 wait_for grep -q "event=routes_advertised" "$WORK/gw.log" ||
  { cat "$WORK/a1.log"; fail "agent routes not advertised"; }
WAIT_S=10 wait_for once "$FWD_A" || fail "forward A does not work at start"
ok "gateway, agent, SOCKS5 and forward A up"

# --- two connections held open across both reloads --------------------------------------------
start hold_socks python3 "$WORK/hold.py" socks "$SOCKS_PORT" socks
start hold_fwd python3 "$WORK/hold.py" direct "$FWD_A" fwd
WAIT_S=20 wait_for test -e "$WORK/socks.started" -a -e "$WORK/fwd.started" ||
  { tail "$WORK/hold_socks.log" "$WORK/hold_fwd.log" "$WORK/gw.log"; fail "transfers did not start"; }

# (a) gateway: forward B added, forward A removed
gw_config "$FWD_B"
kill -HUP "$PID_gw"
WAIT_S=10 wait_for grep -q "event=config_reloaded.*forwards=1" "$WORK/gw.log" ||
  { tail "$WORK/gw.log"; fail "gateway did not reload"; }
grep -q "event=client_listener_closed kind=forward address=127.0.0.1 port=$FWD_A clients=1" \
  "$WORK/gw.log" || { tail "$WORK/gw.log"; fail "forward A listener not closed (with its client)"; }
grep -q "event=client_listening kind=forward address=127.0.0.1 port=$FWD_B" "$WORK/gw.log" ||
  fail "forward B not listening"
refused "$FWD_A" || fail "removed forward A still accepts"
once "$FWD_B" || { tail "$WORK/gw.log"; fail "new forward B does not work"; }
ok "gateway SIGHUP: forward B works, forward A refuses"

# (b) agent: advertise_subnets changes (127.0.0.0/8 -> 127.0.0.1/32 and 10.77.0.0/16)
python3 - "$WORK/a1/agent.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["advertise_subnets"] = ["127.0.0.1/32", "10.77.0.0/16"]
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
kill -HUP "$PID_a1"
WAIT_S=10 wait_for grep -q "event=reloaded" "$WORK/a1.log" || { tail "$WORK/a1.log"; fail "agent did not reload"; }
WAIT_S=10 wait_for sh -c "curl -s --max-time 5 --cacert '$CA' -H 'Authorization: Bearer $ADMIN' \
  '$B/jet/agent-tunnel/agents' | grep -q '10.77.0.0/16'" || { agents_json; fail "new route not in the API"; }
agents_json | grep -q '"127.0.0.0/8"' && fail "old route still in the API"
ok "agent SIGHUP: the API shows 127.0.0.1/32 and 10.77.0.0/16"

# Both transfers go on after the reloads, then finish byte-exact.
sleep 1
touch "$WORK/go"
WAIT_S=60 wait_for sh -c "! kill -0 $PID_hold_socks 2>/dev/null && ! kill -0 $PID_hold_fwd 2>/dev/null" ||
  fail "transfers did not finish"
wait "$PID_hold_socks" || { cat "$WORK/hold_socks.log"; fail "SOCKS5 transfer broken"; }
wait "$PID_hold_fwd" || { cat "$WORK/hold_fwd.log"; fail "transfer through the removed forward broken"; }
ok "$(cat "$WORK/hold_socks.log"); $(cat "$WORK/hold_fwd.log") (both across both reloads)"

[ "$(grep -c "event=agent_connected" "$WORK/gw.log")" = 1 ] || fail "the agent reconnected"
[ "$(grep -c "event=established" "$WORK/a1.log")" = 1 ] || fail "the agent session was re-established"
agents_json | grep -q '"route_epoch":2' || { agents_json; fail "route epoch not 2"; }
ok "the agent kept its one connection (route epoch 2)"

# --- a broken config is refused whole; the old one stays ---------------------------------------
cp "$D/gateway.json" "$WORK/good.json"
python3 - "$D/gateway.json" "$FWD_A" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["forwards"].append({"listen": "127.0.0.1:" + sys.argv[2], "target": "127.0.0.1", "port": 0})
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
kill -HUP "$PID_gw"
WAIT_S=10 wait_for grep -q "event=config_reload_failed.*forwards\[1\]\.port" "$WORK/gw.log" ||
  { tail -3 "$WORK/gw.log"; fail "broken config not refused naming forwards[1].port"; }
refused "$FWD_A" || fail "a refused config opened a listener"
once "$FWD_B" || fail "forward B broken by a refused reload"
ok "invalid config refused ($(grep -o 'error="[^"]*forwards\[1\][^"]*"' "$WORK/gw.log" | head -1)); old forwards stay"

# --- a forward on a taken port is skipped, the others stay -------------------------------------
TAKEN=$(free_port)
start squat python3 -c 'import socket,sys,time
s=socket.create_server(("127.0.0.1", int(sys.argv[1]))); time.sleep(120)' "$TAKEN"
WAIT_S=5 wait_for sh -c "ss -ltn | grep -q ':$TAKEN '" || fail "squatter not listening"
gw_config "$FWD_B" "$TAKEN" "$FWD_A"
kill -HUP "$PID_gw"
WAIT_S=10 wait_for grep -q "event=client_listen_failed kind=forward address=127.0.0.1 port=$TAKEN" \
  "$WORK/gw.log" || { tail -3 "$WORK/gw.log"; fail "bind failure not logged"; }
WAIT_S=5 wait_for once "$FWD_A" || fail "forward A (re-added) does not work"
once "$FWD_B" || fail "forward B broken by a failed bind"
ok "a forward whose port is taken is logged and skipped; the others work"

# --- socks5 users reload: authentication required from now on ----------------------------------
python3 - "$D/gateway.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["socks5"]["users"] = [{"username": "alice", "password": "pw-of-alice"}]
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
kill -HUP "$PID_gw"
WAIT_S=10 wait_for grep -q "event=config_reloaded.*socks5_users=1" "$WORK/gw.log" || fail "users not reloaded"
curl -s --max-time 10 --socks5 "127.0.0.1:$SOCKS_PORT" "http://127.0.0.1:$SUM_PORT/" -o /dev/null &&
  fail "SOCKS5 without credentials accepted after users were added"
python3 - "$SOCKS_PORT" "$SUM_PORT" <<'PY' || fail "SOCKS5 with the new user refused"
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"\x05\x01\x02")
assert s.recv(2) == b"\x05\x02"
s.sendall(b"\x01\x05alice\x0bpw-of-alice")
assert s.recv(2) == b"\x01\x00"
s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", int(sys.argv[2])))
r = s.recv(10)
assert r[1] == 0, r
PY
grep -q "pw-of-alice" "$WORK/gw.log" && fail "a SOCKS5 password was logged"
ok "SOCKS5 users reloaded: no credentials refused, the new user admitted"

kill -TERM "$PID_gw"
wait "$PID_gw" || fail "gateway exit $?"
! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$WORK/gw.log" "$WORK/a1.log" || fail "sanitizer report"
ok "gateway exits 0, no sanitizer report"
