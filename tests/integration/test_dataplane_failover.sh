# A forward's client speaks first, and the first candidate agent never
# answers: the gateway moves to the next candidate when it declares the
# first one offline, and what the client sent (sent once already, behind the
# first ConnectRequest) goes again to the second agent, byte-exact.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"

FWD_PORT=$(free_port)
SUM_PORT=$(free_port)

gw_init
python3 - "$D/gateway.json" "$FWD_PORT" "$SUM_PORT" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["heartbeat_interval"] = "1s"
cfg["socks5"] = {"enabled": False}
cfg["forwards"] = [{"listen": "127.0.0.1:" + sys.argv[2], "target": "127.0.0.1",
                    "port": int(sys.argv[3])}]
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY

sum_target "$SUM_PORT"
start gw "$GW" run --config "$D/gateway.json"
WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$CA" "$B/health/ready" ||
  { cat "$WORK/gw.log"; fail "gateway not ready"; }

# enroll NAME SUBNETS : an agent with loopback allowed
enroll() {
  enroll_agent "$WORK/$1" "$1" --advertise-subnets "$2"
  python3 - "$WORK/$1/agent.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["deny"] = []
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
}
# The more specific route makes "first" the first candidate.
enroll first 127.0.0.1/32
enroll second 127.0.0.0/8
start first "$AG" run --config "$WORK/first/agent.json"
start second "$AG" run --config "$WORK/second/agent.json"
two_online() { [ "$(metric 'atun_gateway_agents{status="online"}')" = 2 ]; }
WAIT_S=15 wait_for two_online || fail "agents not online"

# push SIZE : sends SIZE random bytes through the forward at once, shuts
# down its write side, prints the seconds until the right answer came
push() {
  python3 - "$FWD_PORT" "$1" <<'PY'
import hashlib, os, socket, sys, time
t0 = time.monotonic()
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
print("%.2f" % (time.monotonic() - t0))
sys.exit(0 if got == want else 1)
PY
}

secs=$(push 5000) || fail "both agents up: answer wrong"
ok "both agents up: 5000 bytes byte-exact in $secs s"

# The first agent stops answering (paused, its connection still up); the
# 200 kB case also overflows what the gateway keeps of a client's first
# bytes (64 KiB): the rest waits in the client's socket.
for n in 5000 200000; do
  kill -STOP "$PID_first"
  secs=$(push "$n") || { kill -CONT "$PID_first"; fail "failover: $n bytes came back wrong"; }
  kill -CONT "$PID_first"
  awk -v s="$secs" 'BEGIN { exit !(s >= 1.0) }' ||
    fail "failover: answered after $secs s, too soon to have tried the first agent"
  ok "first candidate silent: $n bytes the client sent at once reached the target byte-exact through the second agent after $secs s"
  WAIT_S=20 wait_for two_online || fail "the first agent did not come back"
done
grep -q "event=agent_offline agent_id=[^ ]* agent_name=first" "$WORK/gw.log" ||
  fail "the first agent was not declared offline"
[ "$(metric 'atun_gateway_client_connects_total{result="ok"}')" = 3 ] ||
  fail "ok connects: $(metric 'atun_gateway_client_connects_total{result="ok"}')"

kill -TERM "$PID_gw"
for _ in $(seq 100); do kill -0 "$PID_gw" 2>/dev/null || break; sleep 0.1; done
! grep -Eq "ERROR: AddressSanitizer|runtime error:|LeakSanitizer" "$WORK/gw.log" ||
  fail "sanitizer report in the gateway log"
ok "gateway exits cleanly, no sanitizer report"
