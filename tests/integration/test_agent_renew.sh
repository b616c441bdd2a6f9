# Agent certificate renewal against the real gateway on loopback.
#
# The shortest client_cert_lifetime the gateway takes is 1 h, so renewal
# would come after about 40 minutes: too long for a test.  Instead the
# enrolled certificate is replaced, before the agent starts, by one the
# gateway's CA signs with openssl for the same key and agent id, valid from
# two days ago until OLD_S seconds from now: past two thirds of its
# lifetime.  The agent must ask at once over the control stream, check and
# install the answer (a 1 h certificate, so not_after moves forward), log
# cert_renewed, and stay online on the same connection.  Once the old
# certificate has expired, the gateway is restarted: the agent gets back in
# only if it dials with the new one.
source "$(dirname "$0")/lib.sh"

API_PORT=$(free_port)
QUIC_PORT=$(free_port)
GWDIR="$WORK/gw"
ADIR="$WORK/agent"
OLD_S=20

"$GW" init --state-dir "$GWDIR" --hostname localhost --ip 127.0.0.1 \
  --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" \
  >"$WORK/init.out" 2>&1 || fail "gateway init: $(cat "$WORK/init.out")"
python3 - "$GWDIR/gateway.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["socks5"]["enabled"] = False
c["heartbeat_interval"] = 1000
c["client_cert_lifetime"] = "1h"
json.dump(c, open(p, "w"), indent=2)
PY
start_gateway() {
  start gw "$GW" run --config "$GWDIR/gateway.json"
  wait_for grep -q api_listening "$WORK/gw.log" || fail "gateway did not start: $(cat "$WORK/gw.log")"
}
start_gateway

mkdir -p "$ADIR"
echo '{"log_level": "debug"}' >"$ADIR/agent.json"
"$GW" token create --config "$GWDIR/gateway.json" --ttl 10m 2>/dev/null \
  | "$AG" enroll - --name edge-1 --advertise-subnets 10.1.0.0/16 \
      --config "$ADIR/agent.json" >"$WORK/enroll.out" 2>&1 \
  || fail "enroll: $(cat "$WORK/enroll.out")"
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
  "$ADIR/agent.json" "$1"; }
ID=$(field agent_id)
CERT=$(field cert_file)
KEY=$(field key_file)
[ -f "$CERT" ] && [ -f "$KEY" ] || fail "enrolled files missing: $CERT $KEY"

# --- an old certificate: same key and id, signed by the gateway's CA ----------
CA="$WORK/ca"
mkdir -p "$CA"
: >"$CA/index.txt"
echo 1000 >"$CA/serial"
cat >"$CA/ca.cnf" <<CNF
[ca]
default_ca = c
[c]
database = $CA/index.txt
new_certs_dir = $CA
serial = $CA/serial
policy = p
default_md = sha256
unique_subject = no
[p]
commonName = supplied
[ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:atun://agent/$ID
CNF
openssl req -new -key "$KEY" -subj /CN=edge-1 -out "$CA/agent.csr" 2>"$CA/req.err" \
  || fail "csr: $(cat "$CA/req.err")"
openssl ca -batch -config "$CA/ca.cnf" -extensions ext -notext \
  -startdate "$(date -u -d '-2 days' +%y%m%d%H%M%SZ)" \
  -enddate "$(date -u -d "+$OLD_S seconds" +%y%m%d%H%M%SZ)" \
  -cert "$GWDIR/ca.crt" -keyfile "$GWDIR/ca.key" -in "$CA/agent.csr" -out "$CA/old.crt" \
  2>"$CA/ca.err" || fail "openssl ca: $(cat "$CA/ca.err")"
cp "$CA/old.crt" "$CERT"
chmod 600 "$CERT"
enddate() { date -u -d "$(openssl x509 -in "$1" -noout -enddate | cut -d= -f2)" +%s; }
OLD_END=$(enddate "$CERT")
ok "old certificate installed, $(openssl x509 -in "$CERT" -noout -enddate)"

# --- run: renewed on the first connection -------------------------------------
start agent "$AG" run --config "$ADIR/agent.json"
wait_for grep -q 'event=established' "$WORK/agent.log" \
  || fail "agent not established: $(cat "$WORK/agent.log")"
wait_for grep -q 'event=cert_renewed' "$WORK/agent.log" \
  || fail "no cert_renewed: $(cat "$WORK/agent.log")"
grep 'event=cert_renewed' "$WORK/agent.log" | grep -q 'not_after=20' \
  || fail "cert_renewed without not_after"
NEW_END=$(enddate "$CERT")
[ "$NEW_END" -gt "$OLD_END" ] || fail "not_after did not move: $OLD_END -> $NEW_END"
ok "renewed: not_after $OLD_END -> $NEW_END"
[ "$(stat -c %a "$CERT")" = 600 ] || fail "cert_file mode $(stat -c %a "$CERT")"
openssl verify -CAfile "$GWDIR/ca.crt" "$CERT" >/dev/null 2>&1 \
  || fail "the new certificate does not chain to the CA"
[ "$(openssl x509 -in "$CERT" -noout -pubkey)" = "$(openssl pkey -in "$KEY" -pubout)" ] \
  || fail "the new certificate holds another key"
ok "new certificate: mode 0600, chains to the CA, same key"

# --- still online on the same connection, and no second request ---------------
sleep 3
kill -0 "$PID_agent" || fail "agent exited: $(cat "$WORK/agent.log")"
[ "$(grep -c 'event=established' "$WORK/agent.log")" = 1 ] \
  || fail "the agent reconnected: $(cat "$WORK/agent.log")"
if grep -q 'event=disconnected\|event=refused' "$WORK/agent.log"; then
  fail "the connection dropped: $(cat "$WORK/agent.log")"
fi
[ "$(grep -c 'event=cert_renew_requested' "$WORK/agent.log")" = 1 ] \
  || fail "more than one renewal request: $(cat "$WORK/agent.log")"
ok "same connection, one request"

# --- the next connection uses the new certificate -----------------------------
while [ "$(date +%s)" -le "$((OLD_END + 1))" ]; do sleep 0.5; done
kill -TERM "$PID_gw"
wait_for bash -c "! kill -0 $PID_gw" || fail "gateway did not stop"
start_gateway
WAIT_S=20 wait_for bash -c "[ \$(grep -c 'event=established' '$WORK/agent.log') -ge 2 ]" \
  || fail "agent not back with the new certificate: $(cat "$WORK/agent.log")"
grep -q 'event=cert_reloaded' "$WORK/agent.log" || fail "no cert_reloaded line"
ok "back after the old certificate expired: the new one was used"
