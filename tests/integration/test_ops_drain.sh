# SIGTERM drains: a transfer of about 5 s (longer than the gateway's
# offline timeout) is under way when the gateway gets SIGTERM; it finishes
# byte-exact, new clients are refused at once
# during the drain, and the gateway exits 0 within drain_timeout.  Then the
# same for the agent: a transfer under way finishes byte-exact, new
# connections through it fail during its drain, and it exits 0 within its
# drain_timeout.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"

SOCKS_PORT=$(free_port)
SUM_PORT=$(free_port)
DRAIN_S=8

gw_init
python3 - "$D/gateway.json" "$SOCKS_PORT" "$DRAIN_S" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
# Offline after 3 x 1 s: shorter than the transfer the gateway's drain
# must let finish, during which the agent, lingering for its streams after
# Goodbye, sends no more heartbeats (its session moved on).
cfg["heartbeat_interval"] = "1s"
cfg["drain_timeout"] = sys.argv[3] + "s"
cfg["socks5"] = {"enabled": True, "listen": "127.0.0.1:" + sys.argv[2], "users": []}
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY

# xfer.py NAME : through SOCKS5 to the sum target, sends random data at
# ~4 MB/s for $XFER_S s, 3 by default (touching $WORK/NAME.started after
# 512 kB), shuts down its write side and checks the "length sha256" answer.
cat >"$WORK/xfer.py" <<'PY'
import hashlib, os, socket, struct, sys, time
name, work = sys.argv[1], os.environ["WORK"]
s = socket.create_connection(("127.0.0.1", int(os.environ["SOCKS_PORT"])), timeout=30)
s.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") +
          struct.pack(">H", int(os.environ["SUM_PORT"])))
r = b""
while len(r) < 12: r += s.recv(12 - len(r))
assert r[:2] == b"\x05\x00" and r[3] == 0, r
h, n, end = hashlib.sha256(), 0, time.monotonic() + float(os.environ.get("XFER_S", "3"))
while time.monotonic() < end:
    chunk = os.urandom(65536)
    s.sendall(chunk)
    h.update(chunk); n += len(chunk)
    if n >= 1 << 19 and not os.path.exists(f"{work}/{name}.started"):
        open(f"{work}/{name}.started", "w").close()
    time.sleep(0.016)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(65536)
    if not b: break
    got += b
ok = got == b"%d %s" % (n, h.hexdigest().encode())
print(name, n, "bytes", "ok" if ok else "MISMATCH %r" % got)
sys.exit(0 if ok else 1)
PY
# socks_rep : the SOCKS5 reply code of a CONNECT to the sum target, "refused"
# when the TCP connect is refused, "closed" when the connection closes first
socks_rep() {
  python3 - <<'PY'
import os, socket, struct
try:
    s = socket.create_connection(("127.0.0.1", int(os.environ["SOCKS_PORT"])), timeout=10)
except ConnectionRefusedError:
    print("refused"); raise SystemExit
s.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") +
          struct.pack(">H", int(os.environ["SUM_PORT"])))
r = b""
while len(r) < 4:  # the method reply (2 bytes), then the CONNECT reply
    b = s.recv(12 - len(r))
    if not b: break
    r += b
print("closed" if len(r) < 4 else "%02x" % r[3])
PY
}
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }
export WORK SOCKS_PORT SUM_PORT

sum_target "$SUM_PORT"
start gw "$GW" run --config "$D/gateway.json"
WAIT_S=20 wait_for curl -sf --max-time 2 --cacert "$CA" "$B/health/ready" ||
  { cat "$WORK/gw.log"; fail "gateway not ready"; }
mkdir -p "$WORK/a1"
"$GW" token create --config "$D/gateway.json" --ttl 10m 2>/dev/null |
  "$AG" enroll - --name site-a --config "$WORK/a1/agent.json" \
    --advertise-subnets 127.0.0.0/8 >"$WORK/a1/enroll.out" 2>&1 ||
  { cat "$WORK/a1/enroll.out"; fail "enroll"; }
python3 - "$WORK/a1/agent.json" "$DRAIN_S" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["deny"] = []
cfg["drain_timeout"] = sys.argv[2] + "s"
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
start a1 "$AG" run --config "$WORK/a1/agent.json"
WAIT_S=20 wait_for grep -q "event=routes_advertised" "$WORK/gw.log" ||
  { cat "$WORK/a1.log"; fail "agent routes not advertised"; }
[ "$(socks_rep)" = 00 ] || fail "SOCKS5 does not work before the drain"

# --- the gateway drains ---------------------------------------------------------------------------
XFER_S=5 start x1 python3 "$WORK/xfer.py" gw
WAIT_S=10 wait_for test -e "$WORK/gw.started" || { cat "$WORK/x1.log"; fail "transfer did not start"; }
t0=$(ms_now)
kill -TERM "$PID_gw"
WAIT_S=5 wait_for grep -q "event=shutdown_started" "$WORK/gw.log" || fail "no shutdown_started"
rep=$(socks_rep)
[ "$rep" = refused ] || fail "a new SOCKS5 client during the gateway's drain got '$rep', not refused"
curl -s --max-time 3 --cacert "$CA" "$B/health/ready" >/dev/null && fail "the API still answers during the drain"
kill -0 "$PID_x1" 2>/dev/null || fail "the transfer ended before it could outlast the SIGTERM"
ok "during the gateway's drain: new clients refused, the transfer goes on"
wait "$PID_x1" || { cat "$WORK/x1.log"; tail -n 12 "$WORK/gw.log" "$WORK/a1.log"; fail "the transfer broke during the gateway's drain"; }
rc=0; wait "$PID_gw" || rc=$?
dt=$(( $(ms_now) - t0 ))
[ "$rc" = 0 ] || { tail "$WORK/gw.log"; fail "gateway exit $rc after the drain"; }
[ "$dt" -le $(( DRAIN_S * 1000 + 1500 )) ] || fail "gateway took $dt ms to exit (drain_timeout ${DRAIN_S}s)"
ok "$(cat "$WORK/x1.log") across the gateway's SIGTERM; it exited 0 after $dt ms"
grep -q "event=gateway_goodbye" "$WORK/a1.log" || fail "the agent got no Goodbye"

# --- the agent drains -----------------------------------------------------------------------------
start gw2 "$GW" run --config "$D/gateway.json"
WAIT_S=20 wait_for curl -sf --max-time 2 --cacert "$CA" "$B/health/ready" ||
  { cat "$WORK/gw2.log"; fail "gateway did not come back"; }
# The agent reconnects on its backoff (a few seconds at most here).
WAIT_S=30 wait_for grep -q "event=routes_advertised" "$WORK/gw2.log" ||
  { tail "$WORK/a1.log"; fail "agent did not come back"; }
start x2 python3 "$WORK/xfer.py" agent
WAIT_S=10 wait_for test -e "$WORK/agent.started" || { cat "$WORK/x2.log"; fail "transfer 2 did not start"; }
t0=$(ms_now)
kill -TERM "$PID_a1"
WAIT_S=5 wait_for grep -q "event=draining" "$WORK/a1.log" || fail "agent did not start draining"
WAIT_S=5 wait_for grep -q "event=agent_goodbye" "$WORK/gw2.log" || fail "gateway got no Goodbye"
rep=$(socks_rep)
[ "$rep" != 00 ] || { tail -n 15 "$WORK/a1.log" "$WORK/gw2.log"; fail "a new connection through the draining agent succeeded"; }
kill -0 "$PID_x2" 2>/dev/null || fail "transfer 2 ended before it could outlast the SIGTERM"
ok "during the agent's drain: a new connection gets SOCKS reply $rep, the transfer goes on"
wait "$PID_x2" || { cat "$WORK/x2.log"; fail "the transfer broke during the agent's drain"; }
rc=0; wait "$PID_a1" || rc=$?
dt=$(( $(ms_now) - t0 ))
[ "$rc" = 0 ] || { tail "$WORK/a1.log"; fail "agent exit $rc after the drain"; }
[ "$dt" -le $(( DRAIN_S * 1000 + 1500 )) ] || fail "agent took $dt ms to exit (drain_timeout ${DRAIN_S}s)"
ok "$(cat "$WORK/x2.log") across the agent's SIGTERM; it exited 0 after $dt ms"

kill -TERM "$PID_gw2"
wait "$PID_gw2" || fail "gateway 2 exit $?"
! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$WORK"/*.log || fail "sanitizer report"
ok "no sanitizer report"
