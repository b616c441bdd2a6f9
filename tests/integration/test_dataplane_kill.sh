# Ends that die mid-transfer (issue #7):
#  - kill -9 of the agent closes the SOCKS5 client within a bound: the
#    gateway reports the agent offline after 3 missed 1 s heartbeats and
#    closes its connection, which resets every client of it;
#  - an agent that only went quiet (SIGSTOP past the offline timeout) is
#    dropped the same way and, once it runs again, reconnects and carries
#    traffic;
#  - kill -9 of the client resets the target side, for a target that sends
#    and for one that receives.
# Prints every delay it measures.  DP_KEEP=DIR copies the work directory
# (logs) there at the end.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"
[ -z "${DP_KEEP:-}" ] || trap 'cp -r "$WORK" "$DP_KEEP"; cleanup' EXIT

# Bounds.  Agent death: the offline timeout is 3 s after the last heartbeat
# seen (up to 1 s before the kill), then one registry timer tick; 6 s leaves
# room for a loaded machine.  Client death: nothing waits on a timer, only
# the loops of both daemons.
AGENT_KILL_MS_MAX=6000
CLIENT_KILL_MS_MAX=2000
RECONNECT_MS_MAX=10000

SOCKS_PORT=$(free_port)
TARGET_PORT=$(free_port)
A="$WORK/a"

ms_now() { echo $(( $(date +%s%N) / 1000000 )); }
logs() { tail -n 15 "$WORK/gw.log" "$WORK"/ag*.log; }

# --- gateway and agent on loopback ---------------------------------------------------------------
gw_init
python3 - "$D/gateway.json" "$SOCKS_PORT" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["heartbeat_interval"] = "1s"
cfg["offline_missed_heartbeats"] = 3
cfg["socks5"] = {"enabled": True, "listen": "127.0.0.1:" + sys.argv[2], "users": []}
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
start gw "$GW" run --config "$D/gateway.json"
WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$D/ca.crt" \
  "https://127.0.0.1:$API_PORT/health/ready" || { cat "$WORK/gw.log"; fail "gateway not ready"; }

mkdir -p "$A"
enroll_agent "$A" kill --advertise-subnets 127.0.0.0/8
python3 - "$A/agent.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["deny"] = ["127.0.0.2/32"]
cfg["auto_detect_domains"] = False
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
advertised() { [ "$(grep -c "event=routes_advertised" "$WORK/gw.log")" -ge "$1" ]; }
# dropped N : the gateway closed an agent connection for silence N times
dropped() {
  [ "$(grep -c "event=agent_disconnected .*code=heartbeat_timeout" "$WORK/gw.log")" -ge "$1" ]
}
start ag1 "$AG" run --config "$A/agent.json"
WAIT_S=15 wait_for advertised 1 || { cat "$WORK/ag1.log"; fail "agent not online"; }

# --- target and client ------------------------------------------------------------------------------
# The first line names the mode and a tag: "SRC <tag>" sends without end,
# "SINK <tag>" reads without end.  When the connection ends the target
# appends "<tag> <how> <unix ns> <bytes>" to its report file.
cat >"$WORK/target.py" <<'PY'
import os, socket, sys, threading, time
block = os.urandom(65536)
report = sys.argv[2]

def note(tag, how, n):
    with open(report, "a") as f:
        f.write("%s %s %d %d\n" % (tag, how, time.time_ns(), n))

def serve(c):
    f = c.makefile("rb")
    mode, tag = f.readline().split()
    n = 0
    c.settimeout(120)
    try:
        while True:
            if mode == b"SRC":
                c.sendall(block)
                n += len(block)
            else:
                b = c.recv(65536)
                if not b:
                    note(tag.decode(), "eof", n)
                    return
                n += len(b)
    except socket.timeout:
        note(tag.decode(), "timeout", n)
    except OSError as e:
        note(tag.decode(), "reset" if isinstance(e, (ConnectionResetError, BrokenPipeError))
             else "error", n)
    finally:
        c.close()

srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=64)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
# client.py PORT TPORT MODE TAG REPORT [RATE]: SOCKS5 to the target, then
# reads (SRC) or writes (SINK) without end; "started" goes to REPORT after
# the first MiB, and, when the connection ends, "<how> <unix ns> <bytes>".
# With RATE (bytes/s) it reads that slowly and watches the socket's TCP
# state instead: once a reset arrived it reports "rst <unix ns> <bytes
# still queued unread>" and stops, since the kernel hands the application
# every queued byte before the reset.
cat >"$WORK/client.py" <<'PY'
import fcntl, os, socket, struct, sys, termios, time
port, tport, mode, tag, report = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                  sys.argv[4], sys.argv[5])
rate = int(sys.argv[6]) if len(sys.argv) > 6 else 0
TCP_CLOSE = 7

def note(line):
    with open(report, "a") as f:
        f.write(line + "\n")

def unread(s):
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0" * 4))[0]

s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") +
          struct.pack(">H", tport))
r = b""
while len(r) < 12:
    b = s.recv(12 - len(r))
    assert b, "closed in the SOCKS5 handshake"
    r += b
assert r[:2] == b"\x05\x00" and r[3] == 0, r
s.sendall(b"%s %s\n" % (mode.encode(), tag.encode()))
s.settimeout(60)
block, n, started = os.urandom(65536), 0, False
try:
    while True:
        if rate and s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_CLOSE:
            note("rst %d %d" % (time.time_ns(), unread(s)))
            break
        if mode == "SRC":
            b = s.recv(rate // 10 if rate else 65536)
            if not b:
                note("eof %d %d" % (time.time_ns(), n))
                break
            n += len(b)
            if rate: time.sleep(len(b) / rate)
        else:
            s.sendall(block)
            n += len(block)
        if not started and n >= 1 << 20:
            started = True
            note("started")
except socket.timeout:
    note("timeout %d %d" % (time.time_ns(), n))
except OSError:
    note("reset %d %d" % (time.time_ns(), n))
PY
start target python3 "$WORK/target.py" "$TARGET_PORT" "$WORK/target.report"
WAIT_S=10 wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $TARGET_PORT), 1)" ||
  fail "target not up"

# client NAME MODE [RATE] : starts a client and waits until it moved its
# first MiB
client() {
  start "$1" python3 "$WORK/client.py" "$SOCKS_PORT" "$TARGET_PORT" "$2" "$1" \
    "$WORK/$1.report" "${3:-0}"
  WAIT_S=15 wait_for grep -q started "$WORK/$1.report" ||
    { cat "$WORK/$1.log" 2>/dev/null; logs; fail "$1: transfer did not start"; }
}
# client_end NAME : "<how> <unix ns> <bytes>" once the client saw its end
client_end() { grep -v started "$WORK/$1.report"; }
# target_end TAG : "<how> <unix ns> <bytes>" once the target saw its end
target_end() { awk -v t="$1" '$1 == t {print $2, $3, $4}' "$WORK/target.report" 2>/dev/null | grep .; }

# --- kill -9 of the agent mid-transfer ------------------------------------------------------------
# Two clients: c1 reads as fast as it can, c1s at 512 KiB/s.  The kernel
# hands a reader every byte queued in its socket before it reports the
# reset, and a slow reader can have megabytes queued (curl --limit-rate 500k
# had 5.6 MB, 11 s of reading, in test_dataplane_gw.sh), so for c1s the
# time measured is the reset's arrival in its kernel.
client c1 SRC
client c1s SRC 524288
sleep 1
t0=$(date +%s%N)
kill -KILL "$PID_ag1"
WAIT_S=40 wait_for client_end c1 || { logs; fail "client still connected 40 s after the agent died"; }
WAIT_S=40 wait_for client_end c1s || { logs; fail "slow client not reset 40 s after the agent died"; }
read -r how t1 bytes <<<"$(client_end c1)"
ms=$(( (t1 - t0) / 1000000 ))
echo "agent killed: the client saw $how $ms ms later, after $bytes bytes"
[ "$how" != timeout ] || fail "the client connection hung until its own timeout"
[ "$ms" -le "$AGENT_KILL_MS_MAX" ] ||
  { logs; fail "client closed $ms ms after the agent died (bound $AGENT_KILL_MS_MAX ms)"; }
read -r how t1 queued <<<"$(client_end c1s)"
sms=$(( (t1 - t0) / 1000000 ))
echo "agent killed: the slow client's socket saw $how $sms ms later, $queued bytes" \
  "still unread in it"
[ "$how" = rst ] || fail "slow client: $how, not a reset"
[ "$sms" -le "$AGENT_KILL_MS_MAX" ] ||
  { logs; fail "slow client reset $sms ms after the agent died (bound $AGENT_KILL_MS_MAX ms)"; }
dropped 1 || { logs; fail "the gateway did not close the dead agent's connection"; }
ok "agent killed mid-transfer: clients reset after $ms / $sms ms (bound $AGENT_KILL_MS_MAX ms)"

# --- an agent that went quiet comes back --------------------------------------------------------
start ag2 "$AG" run --config "$A/agent.json"
WAIT_S=20 wait_for advertised 2 || { logs; fail "restarted agent not online"; }
kill -STOP "$PID_ag2"
t0=$(ms_now)
WAIT_S=10 wait_for dropped 2 || { logs; fail "quiet agent not dropped"; }
echo "quiet agent: dropped $(( $(ms_now) - t0 )) ms after SIGSTOP"
kill -CONT "$PID_ag2"
t0=$(ms_now)
WAIT_S=$(( RECONNECT_MS_MAX / 1000 )) wait_for advertised 3 ||
  { logs; fail "quiet agent did not come back within $RECONNECT_MS_MAX ms"; }
ms=$(( $(ms_now) - t0 ))
echo "quiet agent: routes advertised again $ms ms after SIGCONT"
client c2 SRC
kill -KILL "$PID_c2"
ok "quiet agent dropped at the offline timeout, back in $ms ms, carries traffic"

# --- kill -9 of the client: the target side ends ------------------------------------------------
for mode in SRC SINK; do
  name="k$mode"
  client "$name" "$mode"
  t0=$(date +%s%N)
  kill -KILL "$(eval echo "\$PID_$name")"
  WAIT_S=10 wait_for target_end "$name" ||
    { logs; fail "$mode target still connected 10 s after the client died"; }
  read -r how t1 bytes <<<"$(target_end "$name")"
  ms=$(( (t1 - t0) / 1000000 ))
  echo "client killed: the $mode target saw $how $ms ms later, after $bytes bytes"
  [ "$how" = reset ] || [ "$how" = eof ] || fail "$mode target ended with $how"
  [ "$ms" -le "$CLIENT_KILL_MS_MAX" ] ||
    fail "$mode target ended $ms ms after the client died (bound $CLIENT_KILL_MS_MAX ms)"
  ok "client killed: the $mode target's connection ended after $ms ms"
done

# --- clean exit ----------------------------------------------------------------------------------------
kill -TERM "$PID_ag2"
wait "$PID_ag2" || fail "agent exit $?"
kill -TERM "$PID_gw"
wait "$PID_gw" || fail "gateway exit $?"
! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$WORK/gw.log" "$WORK/ag2.log" ||
  fail "sanitizer report"
ok "gateway and agent exit cleanly, no sanitizer report"
