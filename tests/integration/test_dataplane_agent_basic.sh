# The agent's side of the data plane with a real gateway and agent on
# loopback: curl through the SOCKS5 listener fetches a file byte-exact by
# address and by name; a denied target, a refused port and an unknown name
# each get their SOCKS reply code fast; a client that goes away resets the
# target side; the agent stops cleanly on SIGTERM.
#
# Loopback is on the agent's default deny list: the agent here advertises
# 127.0.0.0/8 and its config replaces the deny list with 127.0.0.2/32 only
# (the "deny" key is the whole list).  Names resolve through a resolv.conf
# of the test (the agent's "resolv_conf"), whose nameserver is a loopback
# port nobody listens on, and a hosts file (CARES_HOSTS) that knows one name.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"

API_PORT=$(free_port)
QUIC_PORT=$(free_port)
SOCKS_PORT=$(free_port)
HTTP_PORT=$(free_port)
DEAD_PORT=$(free_port)
D="$WORK/gw"
SOCKS="127.0.0.1:$SOCKS_PORT"

"$GW" init --state-dir "$D" --hostname localhost --ip 127.0.0.1 \
  --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" >"$WORK/init.out"
python3 - "$D/gateway.json" "$SOCKS" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["socks5"] = {"enabled": True, "listen": sys.argv[2], "users": []}
cfg["heartbeat_interval"] = "1s"
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
EOF
start gw "$GW" run --config "$D/gateway.json"
WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$D/ca.crt" \
  "https://127.0.0.1:$API_PORT/health/ready" || { cat "$WORK/gw.log"; fail "gateway not ready"; }

A="$WORK/a"
mkdir -p "$A"
"$GW" token create --config "$D/gateway.json" --ttl 10m 2>/dev/null |
  "$AG" enroll - --name dp --config "$A/agent.json" --advertise-subnets 127.0.0.0/8 \
    --advertise-domains dp.test >"$A/enroll.out" 2>&1 || { cat "$A/enroll.out"; fail "enroll"; }
printf 'nameserver 127.0.0.1\n' >"$A/resolv.conf"
printf '127.0.0.1 web.dp.test\n' >"$A/hosts"
python3 - "$A/agent.json" "$A/resolv.conf" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["deny"] = ["127.0.0.2/32"]
cfg["resolv_conf"] = sys.argv[2]
cfg["auto_detect_domains"] = False
cfg["connect_timeout"] = "3s"
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
EOF
export CARES_HOSTS="$A/hosts"
start ag "$AG" run --config "$A/agent.json"
WAIT_S=10 wait_for grep -q "event=routes_advertised" "$WORK/gw.log" ||
  { cat "$WORK/ag.log"; fail "agent not online"; }

mkdir -p "$WORK/www"
head -c 20000000 /dev/urandom >"$WORK/www/big.bin"
head -c 1 /dev/urandom >"$WORK/www/one.bin"
: >"$WORK/www/empty.bin"
(cd "$WORK/www" && exec python3 -m http.server --bind 127.0.0.1 "$HTTP_PORT") \
  >"$WORK/http.log" 2>&1 &
PIDS+=("$!")
WAIT_S=10 wait_for curl -sf --max-time 1 "http://127.0.0.1:$HTTP_PORT/one.bin" ||
  fail "http server not up"

fetch() { # fetch HOST FILE : byte-exact through the tunnel
  curl -sS --max-time 30 --socks5-hostname "$SOCKS" "http://$1:$HTTP_PORT/$2" \
    -o "$WORK/got" || fail "fetch $1/$2 (curl $?)"
  [ "$(sha256sum <"$WORK/got")" = "$(sha256sum <"$WORK/www/$2")" ] ||
    fail "$1/$2 differs"
}
for f in big.bin one.bin empty.bin; do fetch 127.0.0.1 "$f"; done
ok "files byte-exact by address (20 MB, 1 byte, empty)"
fetch web.dp.test big.bin
ok "file byte-exact by name (resolved on the agent)"

ms_now() { echo $(( $(date +%s%N) / 1000000 )); }
socks_code() { # socks_code HOST PORT : the SOCKS reply code curl reports
  curl -sS --max-time 10 --socks5-hostname "$SOCKS" "http://$1:$2/" -o /dev/null \
    2>&1 | sed -n 's/.*Can.t complete SOCKS5 connection to .*(\([0-9]*\)).*/\1/p' || true
}
expect_code() { # expect_code WANT HOST PORT STATUS
  local t0 code ms
  t0=$(ms_now)
  code=$(socks_code "$2" "$3")
  ms=$(( $(ms_now) - t0 ))
  [ "$code" = "$1" ] || fail "$2:$3: SOCKS reply '$code', wanted $1"
  [ "$ms" -le 2000 ] || fail "$2:$3: reply after $ms ms"
  grep -q "event=session_failed .*target=$2 port=$3 status=$4" "$WORK/ag.log" ||
    fail "$2:$3: no agent log line status=$4"
  echo "$2:$3 -> SOCKS $code in $ms ms"
}
expect_code 2 127.0.0.2 "$HTTP_PORT" denied
ok "denied target: not allowed (2), no connect"
expect_code 5 127.0.0.1 "$DEAD_PORT" refused
ok "refused port: connection refused (5)"
expect_code 4 nosuch.dp.test "$HTTP_PORT" dns_failure
ok "unknown name: host unreachable (4)"

# --- the client goes away: the target side is reset ------------------------------------
curl -s --max-time 30 --limit-rate 200k --socks5-hostname "$SOCKS" \
  "http://127.0.0.1:$HTTP_PORT/big.bin" -o /dev/null &
CURL=$!
sleep 1
kill -KILL "$CURL"; wait "$CURL" 2>/dev/null || true
WAIT_S=10 wait_for grep -q "event=session_closed .*end=stream_reset" "$WORK/ag.log" ||
  { tail "$WORK/ag.log"; fail "target side not reset after the client died"; }
ok "client killed mid-transfer: the agent reset the target side"

# --- clean stop ------------------------------------------------------------------------------
kill -TERM "$PID_ag"
rc=0
wait "$PID_ag" || rc=$?
[ "$rc" = 0 ] || fail "agent exit $rc"
! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$WORK/ag.log" "$WORK/gw.log" ||
  fail "sanitizer report"
ok "agent stopped cleanly"
