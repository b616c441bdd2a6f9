# A slow reader downstream keeps both daemons' memory bounded (issue #7).
# A target sends as fast as it can to a SOCKS5 client that reads 1 MiB/s
# for DP_SLOW_S seconds (default 12); VmRSS of the gateway and the agent is
# sampled every 0.5 s and compared with the RSS before the connection was
# opened.
#
# The bounds come from the flow-control settings (core/quic.h, io/pipe.h):
#  - gateway: the bytes it holds for the slow socket are the pipe backlog,
#    at most backlog_max = stream_window_max = 16 MiB (the agent can not
#    send more than the window it was granted and the gateway grants only
#    what the socket took); ngtcp2 keeps nothing beyond the same window.
#  - agent: it reads the target only while the stream has send-buffer
#    room: stream_send_buffer_max = 4 MiB.
# Each gets 8 MiB on top for allocator and sanitizer slack (ASan's redzones
# and its quarantine of freed blocks, which this test caps: see below).
# And end to end: the target can not get more ahead of the client than the
# bytes held in those buffers plus the kernel socket buffers on the way.
# Seen on the 2-core test machine: growth 14 MiB (gateway) and 9 MiB
# (agent) in the debug build, 9 and 5.5 MiB in a release build; with ASan's
# default quarantine (DP_QUARANTINE_MB=256) 64 and 69 MiB.
# DP_KEEP=DIR copies the work directory (logs) there at the end.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"
[ -z "${DP_KEEP:-}" ] || trap 'cp -r "$WORK" "$DP_KEEP"; cleanup' EXIT

MIB=1048576
SLOW_S=${DP_SLOW_S:-12}
WINDOW_MAX=$(( 16 * MIB ))      # atun_quic_settings.stream_window_max default
SEND_BUFFER_MAX=$(( 4 * MIB ))  # atun_quic_settings.stream_send_buffer_max default
SLACK=$(( 8 * MIB ))
GW_GROWTH_MAX=$(( WINDOW_MAX + SLACK ))
AG_GROWTH_MAX=$(( SEND_BUFFER_MAX + SLACK ))
# Kernel buffers between target and client: two receive and two send
# buffers (target -> agent, gateway -> client), each at most the sysctl
# ceiling.
read -r _ _ RMEM_MAX </proc/sys/net/ipv4/tcp_rmem
read -r _ _ WMEM_MAX </proc/sys/net/ipv4/tcp_wmem
AHEAD_MAX=$(( 2 * RMEM_MAX + 2 * WMEM_MAX + WINDOW_MAX + SEND_BUFFER_MAX ))
# ASan keeps up to 256 MiB of freed blocks in quarantine by default, which
# shows as RSS growth that has nothing to do with the data plane: cap it.
# (No effect on a build without ASan.)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=${DP_QUARANTINE_MB:-1}"

SOCKS_PORT=$(free_port)
TARGET_PORT=$(free_port)
A="$WORK/a"

# --- gateway and agent on loopback ---------------------------------------------------------------
gw_init
python3 - "$D/gateway.json" "$SOCKS_PORT" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["heartbeat_interval"] = "1s"
cfg["socks5"] = {"enabled": True, "listen": "127.0.0.1:" + sys.argv[2], "users": []}
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
start gw "$GW" run --config "$D/gateway.json"
WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$D/ca.crt" \
  "https://127.0.0.1:$API_PORT/health/ready" || { cat "$WORK/gw.log"; fail "gateway not ready"; }

mkdir -p "$A"
enroll_agent "$A" slow --advertise-subnets 127.0.0.0/8
python3 - "$A/agent.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["deny"] = ["127.0.0.2/32"]
cfg["auto_detect_domains"] = False
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
start ag "$AG" run --config "$A/agent.json"
WAIT_S=15 wait_for grep -q "event=routes_advertised" "$WORK/gw.log" ||
  { cat "$WORK/ag.log"; fail "agent not online"; }

# --- target: sends without end, counts what the kernel took ----------------------------------------
cat >"$WORK/target.py" <<'PY'
import os, socket, sys, threading
block = os.urandom(65536)

def serve(c, report):
    n = 0
    try:
        while True:
            c.sendall(block)
            n += len(block)
            if n % (1 << 20) == 0:
                with open(report, "w") as f: f.write("%d\n" % n)
    except OSError:
        pass
    with open(report, "w") as f: f.write("%d\n" % n)
    c.close()

srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c, sys.argv[2]), daemon=True).start()
PY
start target python3 "$WORK/target.py" "$TARGET_PORT" "$WORK/sent"
WAIT_S=10 wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $TARGET_PORT), 1)" ||
  fail "target not up"

# --- the slow client and the sampler ------------------------------------------------------------------
# reader.py PORT TPORT SECONDS BYTES_PER_S GW_PID AG_PID: reads at that rate and
# samples both daemons' VmRSS every 0.5 s; prints one line per sample and
# a summary "read base_gw max_gw base_ag max_ag" (bytes).  The baseline is
# taken before the connection exists, so the growth covers everything the
# connection costs.  The first MiB is read at full speed.
cat >"$WORK/reader.py" <<'PY'
import socket, struct, sys, time
port, tport, secs, rate, pids = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]),
                                 int(sys.argv[4]), sys.argv[5:])

def rss(pid):
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"): return int(line.split()[1]) * 1024
    raise OSError("no VmRSS for %s" % pid)

base = [rss(p) for p in pids]
peak = list(base)
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") +
          struct.pack(">H", tport))
r = b""
while len(r) < 12:
    b = s.recv(12 - len(r))
    if not b: sys.exit("closed in the SOCKS5 handshake")
    r += b
if r[:2] != b"\x05\x00" or r[3] != 0: sys.exit("SOCKS5 reply %r" % r)
n = 0
while n < 1 << 20:
    b = s.recv(65536)
    if not b: sys.exit("EOF after %d bytes" % n)
    n += len(b)
t0 = time.monotonic()
n0, next_sample = n, t0 + 0.5
while time.monotonic() - t0 < secs:
    want = n0 + int(rate * (time.monotonic() - t0)) - n
    while want > 0:
        b = s.recv(min(want, 65536))
        if not b: sys.exit("EOF after %d bytes" % n)
        n += len(b)
        want -= len(b)
    now = time.monotonic()
    if now >= next_sample:
        cur = [rss(p) for p in pids]
        peak = [max(a, b) for a, b in zip(peak, cur)]
        print("t=%.1fs read=%d gw_rss=%d ag_rss=%d" % (now - t0, n, cur[0], cur[1]), flush=True)
        next_sample += 0.5
    time.sleep(0.05)
print("%d %d %d %d %d" % (n, base[0], peak[0], base[1], peak[1]))
PY
timeout $(( SLOW_S + 60 )) python3 "$WORK/reader.py" "$SOCKS_PORT" "$TARGET_PORT" "$SLOW_S" \
  "$MIB" "$PID_gw" "$PID_ag" >"$WORK/samples" ||
  { cat "$WORK/samples"; tail -n 5 "$WORK/gw.log" "$WORK/ag.log"; fail "slow reader"; }
read -r got gw0 gw1 ag0 ag1 < <(tail -n 1 "$WORK/samples")
sent=$(cat "$WORK/sent" 2>/dev/null || echo 0)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "slow reader: read $(mib "$got") in $SLOW_S s; the target got $(mib "$sent") into its socket"
echo "gateway VmRSS: $(mib "$gw0") before, peak $(mib "$gw1"), growth $(mib $(( gw1 - gw0 )))" \
  "(bound $(mib "$GW_GROWTH_MAX"))"
echo "agent   VmRSS: $(mib "$ag0") before, peak $(mib "$ag1"), growth $(mib $(( ag1 - ag0 )))" \
  "(bound $(mib "$AG_GROWTH_MAX"))"
[ "$got" -ge $(( SLOW_S * MIB / 2 )) ] || fail "the client read only $got bytes"
[ $(( gw1 - gw0 )) -le "$GW_GROWTH_MAX" ] || { cat "$WORK/samples"; fail "gateway RSS grew too much"; }
[ $(( ag1 - ag0 )) -le "$AG_GROWTH_MAX" ] || { cat "$WORK/samples"; fail "agent RSS grew too much"; }
ok "slow reader: gateway and agent memory bounded"
ahead=$(( sent - got ))
echo "the target got $(mib "$ahead") ahead of the client (bound $(mib "$AHEAD_MAX"))"
[ "$ahead" -le "$AHEAD_MAX" ] || fail "the target was not held back"
ok "slow reader: the target is held back by flow control"

# --- clean exit ----------------------------------------------------------------------------------------
kill -TERM "$PID_ag"
wait "$PID_ag" || fail "agent exit $?"
kill -TERM "$PID_gw"
wait "$PID_gw" || fail "gateway exit $?"
! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$WORK/gw.log" "$WORK/ag.log" ||
  fail "sanitizer report"
ok "gateway and agent exit cleanly, no sanitizer report"
