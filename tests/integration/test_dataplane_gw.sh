# The gateway's data plane on loopback: SOCKS5 and a static forward through
# a real agent to a local HTTP target; the SOCKS reply codes of a target no
# agent routes (0x04 at once) and of a target the agent denies (0x02).
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"

SOCKS_PORT=$(free_port)
FWD_PORT=$(free_port)
FWD2_PORT=$(free_port)
HTTP_PORT=$(free_port)
ECHO_PORT=$(free_port)

gw_init
P="$B/jet/agent-tunnel"
python3 - "$D/gateway.json" "$SOCKS_PORT" "$FWD_PORT" "$HTTP_PORT" "$FWD2_PORT" "$ECHO_PORT" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["heartbeat_interval"] = "1s"
cfg["socks5"] = {"enabled": True, "listen": "127.0.0.1:" + sys.argv[2], "users": []}
cfg["forwards"] = [{"listen": "127.0.0.1:" + sys.argv[3], "target": "127.0.0.1",
                    "port": int(sys.argv[4])},
                   {"listen": "127.0.0.1:" + sys.argv[5], "target": "127.0.0.1",
                    "port": int(sys.argv[6])}]
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY

ms_now() { echo $(( $(date +%s%N) / 1000000 )); }
# half_close PORT SIZE : sends SIZE random bytes through SOCKS5, shuts down its
# write side, and checks the target's "length sha256" answer
half_close() {
  python3 - "$SOCKS_PORT" "$1" "$2" <<'PY'
import hashlib, os, socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
data = os.urandom(int(sys.argv[3]))
# Greeting, request and the first data in one write: early data.
s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") +
          struct.pack(">H", int(sys.argv[2])) + data[:1000])
r = b""
while len(r) < 12: r += s.recv(12 - len(r))
assert r[:2] == b"\x05\x00" and r[3] == 0, r
s.sendall(data[1000:])
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(65536)
    if not b: break
    got += b
want = b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode())
sys.exit(0 if got == want else 1)
PY
}
# forward_push SIZE : through the second forward, sends SIZE random bytes the
# moment the connection is up (before the agent can have answered: the
# gateway sends them behind the ConnectRequest), shuts down its write side
# and checks the target's "length sha256" answer
forward_push() {
  python3 - "$FWD2_PORT" "$1" <<'PY'
import hashlib, os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
data = os.urandom(int(sys.argv[2]))
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(65536)
    if not b: break
    got += b
want = b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode())
sys.exit(0 if got == want else 1)
PY
}
# socks_rep HOST PORT : the reply code of a SOCKS5 CONNECT in hex, and the
# milliseconds from the request to the reply
socks_rep() {
  python3 - "$SOCKS_PORT" "$1" "$2" <<'PY'
import socket, struct, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"\x05\x01\x00")
assert s.recv(2) == b"\x05\x00"
host = sys.argv[2].encode()
t0 = time.monotonic()
s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack(">H", int(sys.argv[3])))
r = s.recv(10)
print("%02x %d" % (r[1], (time.monotonic() - t0) * 1000))
PY
}

start gw "$GW" run --config "$D/gateway.json"
WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$CA" "$B/health/ready" ||
  { cat "$WORK/gw.log"; fail "gateway not ready"; }
grep -q "event=client_listening kind=socks5 address=127.0.0.1 port=$SOCKS_PORT" "$WORK/gw.log" ||
  fail "no socks5 listener"

# --- no agent routes the target: 0x04 at once ------------------------------------------------
read -r rep elapsed < <(socks_rep 10.9.9.9 80)
[ "$rep" = 04 ] || fail "no agent: reply $rep, not 0x04"
[ "$elapsed" -le 500 ] || fail "no agent: reply after $elapsed ms"
[ "$(metric 'atun_gateway_client_connects_total{result="no_agent"}')" = 1 ] || fail "no_agent metric"
ok "no agent: SOCKS reply 0x04 after $elapsed ms"

# --- an agent routes 127.0.0.0/8 -------------------------------------------------------------
mkdir -p "$WORK/a1" "$WORK/www"
head -c 300000 /dev/urandom >"$WORK/www/blob"
"$GW" token create --config "$D/gateway.json" --ttl 10m 2>/dev/null |
  "$AG" enroll - --name site-a --config "$WORK/a1/agent.json" \
    --advertise-subnets 127.0.0.0/8 >"$WORK/a1/enroll.out" 2>&1 ||
  { cat "$WORK/a1/enroll.out"; fail "enroll"; }
# Loopback is the target network here: deny only 127.0.0.2.
python3 - "$WORK/a1/agent.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["deny"] = ["127.0.0.2/32"]
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
start www python3 -m http.server --bind 127.0.0.1 --directory "$WORK/www" "$HTTP_PORT"
sum_target "$ECHO_PORT"
start a1 "$AG" run --config "$WORK/a1/agent.json"
WAIT_S=10 wait_for grep -q "event=routes_advertised" "$WORK/gw.log" ||
  { cat "$WORK/a1.log"; fail "agent routes not advertised"; }
WAIT_S=10 wait_for curl -sf --max-time 2 "http://127.0.0.1:$HTTP_PORT/blob" -o /dev/null ||
  fail "target not up"

curl -sf --max-time 20 --socks5-hostname "127.0.0.1:$SOCKS_PORT" \
  "http://127.0.0.1:$HTTP_PORT/blob" -o "$WORK/got" || { tail "$WORK/gw.log" "$WORK/a1.log"; fail "curl through SOCKS5"; }
cmp -s "$WORK/got" "$WORK/www/blob" || fail "SOCKS5 fetch differs"
ok "curl --socks5-hostname fetches 300 kB byte-exact through the tunnel"

curl -sf --max-time 20 "http://127.0.0.1:$FWD_PORT/blob" -o "$WORK/got2" ||
  { tail "$WORK/gw.log" "$WORK/a1.log"; fail "curl through the forward"; }
cmp -s "$WORK/got2" "$WORK/www/blob" || fail "forward fetch differs"
ok "static forward fetches byte-exact"

[ "$(metric 'atun_gateway_client_connects_total{result="ok"}')" -ge 2 ] || fail "ok metric"

# --- a target the agent denies: 0x02 -------------------------------------------------------
read -r rep elapsed < <(socks_rep 127.0.0.2 80)
[ "$rep" = 02 ] || fail "denied: reply $rep, not 0x02"
[ "$elapsed" -le 1000 ] || fail "denied: reply after $elapsed ms"
[ "$(metric 'atun_gateway_client_connects_total{result="denied"}')" = 1 ] || fail "denied metric"
ok "denied target: SOCKS reply 0x02 after $elapsed ms"

# --- a refused port: 0x05 ------------------------------------------------------------------------
read -r rep elapsed < <(socks_rep 127.0.0.1 "$(free_port)")
[ "$rep" = 05 ] || fail "refused: reply $rep, not 0x05"
ok "refused port: SOCKS reply 0x05 after $elapsed ms"

# --- half-close, early data, concurrency ---------------------------------------------------------
half_close "$ECHO_PORT" 5000000 || fail "half-close: answer wrong"
for n in 1 100 70000 3000000; do
  forward_push "$n" || fail "forward: $n bytes sent before the answer came back wrong"
done
ok "forward: a client that speaks first (1 B, 100 B, 70 kB, 3 MB, then EOF) is carried byte-exact"
ok "half-close: 5 MB up, write side shut, whole answer read"
pids=()
for i in $(seq 20); do
  half_close "$ECHO_PORT" $(( (RANDOM * 37) % 400000 + 1 )) & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a concurrent connection failed"; done
ok "20 concurrent connections of random sizes, each byte-exact"
no_clients() { [ "$(metric atun_gateway_client_connections)" = 0 ]; }
WAIT_S=5 wait_for no_clients ||
  fail "client connections left: $(metric atun_gateway_client_connections)"
up=$(metric 'atun_gateway_tunnel_bytes_total{direction="up"}')
[ "$up" -ge 5000000 ] || fail "bytes up metric $up"

# --- the agent dies mid-transfer: the client connection closes --------------------------------
# The gateway resets the client about 3 s after the kill (three missed 1 s
# heartbeats, then it closes the agent's connection), but curl sees the
# reset only after reading what its socket already holds, at 500 kB/s; the
# bound allows for that.
head -c 100000000 /dev/zero >"$WORK/www/big"
oks=$(metric 'atun_gateway_client_connects_total{result="ok"}')
start slow curl -s --max-time 120 --limit-rate 500k --socks5-hostname "127.0.0.1:$SOCKS_PORT" \
  "http://127.0.0.1:$HTTP_PORT/big" -o /dev/null
oks_grew() { [ "$(metric 'atun_gateway_client_connects_total{result="ok"}')" -gt "$oks" ]; }
WAIT_S=10 wait_for oks_grew ||
  fail "slow download did not start"
sleep 1
kill -KILL "$PID_a1"
t0=$(ms_now)
for _ in $(seq 450); do kill -0 "$PID_slow" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PID_slow" 2>/dev/null && { tail -5 "$WORK/gw.log"; fail "client still connected 45 s after the agent died"; }
echo "client closed $(( $(ms_now) - t0 )) ms after kill -9 of the agent"
ok "agent killed mid-transfer: the client connection closes"

# --- clean exit ----------------------------------------------------------------------------------
kill -TERM "$PID_gw"
wait "$PID_gw" || fail "gateway exit $?"
! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$WORK/gw.log" || fail "sanitizer report"
ok "gateway exits cleanly, no sanitizer report"
