# `atun-agent enroll` against the real gateway on loopback: a full
# enrollment that merges into an existing config, a tampered CA pin, a
# reused token, a bad string, an unreachable API, a config enrollment would
# break.  Every failure must leave the directory as it was.
source "$(dirname "$0")/lib.sh"

API_PORT=$(free_port)
QUIC_PORT=$(free_port)
GWDIR="$WORK/gw"

# The server certificate names gw.invalid and 127.0.0.1, not localhost: the
# API is reached by address, and "localhost" stands for a host the
# certificate does not name.
"$GW" init --state-dir "$GWDIR" --hostname gw.invalid --ip 127.0.0.1 \
  --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" \
  >"$WORK/init.out" 2>&1 || fail "gateway init: $(cat "$WORK/init.out")"
python3 - "$GWDIR/gateway.json" "$API_PORT" "$QUIC_PORT" <<'EOF'
import json, sys
p, api, quic = sys.argv[1:]
c = json.load(open(p))
c["socks5"]["enabled"] = False
c["api_public_url"] = "https://127.0.0.1:" + api
c["quic_public_endpoint"] = "127.0.0.1:" + quic
json.dump(c, open(p, "w"), indent=2)
EOF
start gw "$GW" run --config "$GWDIR/gateway.json"
wait_for grep -q api_listening "$WORK/gw.log" || fail "gateway did not start: $(cat "$WORK/gw.log")"

token() { "$GW" token create --config "$GWDIR/gateway.json" --ttl 10m 2>/dev/null; }

# Every file of a directory with its mode, for before/after comparisons.
snapshot() { (cd "$1" && find . -type f -printf '%p %m %s\n' | sort); }

# --- a full enrollment, merged into a config with a foreign key ------------
ADIR="$WORK/agent"
mkdir -p "$ADIR"
cat >"$ADIR/agent.json" <<'EOF'
{
  "operator_note": {"keep": [1, 2.50, "x"]},
  "log_level": "debug",
  "advertise_domains": ["corp.example"]
}
EOF
chmod 0640 "$ADIR/agent.json"
T1=$(token)
"$AG" enroll "$T1" --name edge-1 --advertise-subnets 10.1.0.0/16,192.168.5.0/24 \
  --config "$ADIR/agent.json" >"$WORK/enroll1.out" 2>&1 \
  || fail "enroll failed: $(cat "$WORK/enroll1.out")"
grep -q 'event=enrolled' "$WORK/enroll1.out" || fail "no enrolled line"
ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["agent_id"])' "$ADIR/agent.json")
for f in "agent-$ID.key" "agent-$ID.crt" "agent-$ID-ca.crt"; do
  [ -f "$ADIR/$f" ] || fail "missing $f"
  [ "$(stat -c %a "$ADIR/$f")" = 600 ] || fail "$f mode $(stat -c %a "$ADIR/$f")"
done
[ "$(stat -c %a "$ADIR/agent.json")" = 640 ] || fail "config mode changed"
python3 - "$ADIR/agent.json" "$ADIR" "$ID" "$QUIC_PORT" <<'EOF' || fail "config not merged as expected"
import json, sys
path, d, aid, port = sys.argv[1:]
text = open(path).read()
c = json.loads(text)
assert '"keep": [1, 2.50, "x"]' in text, "foreign value respelled"
assert c["operator_note"] == {"keep": [1, 2.5, "x"]}
assert c["log_level"] == "debug"
assert c["advertise_domains"] == ["corp.example"], c["advertise_domains"]
assert c["advertise_subnets"] == ["10.1.0.0/16", "192.168.5.0/24"]
assert c["name"] == "edge-1" and c["agent_id"] == aid
assert c["gateway"] == "127.0.0.1:" + port, c["gateway"]
assert c["key_file"] == d + "/agent-" + aid + ".key"
assert c["ca_file"] == d + "/agent-" + aid + "-ca.crt"
assert len(c["server_spki_sha256"]) == 64
EOF
# The stored CA is the gateway's, byte for byte.
cmp -s "$ADIR/agent-$ID-ca.crt" "$GWDIR/ca.crt" || fail "CA file differs from the gateway's"
grep -q "event=agent_enrolled agent_id=$ID" "$WORK/gw.log" || fail "gateway did not log it"
ok "enrollment merged into the config, files 0600"

# --- the same token again: refused, nothing written --------------------------
BEFORE=$(snapshot "$ADIR")
SUM=$(sha256sum <"$ADIR/agent.json")
set +e
"$AG" enroll "$T1" --name edge-2 --config "$ADIR/agent.json" >"$WORK/reuse.out" 2>&1
RC=$?
set -e
[ "$RC" = 3 ] || fail "reused token: exit $RC, want 3: $(cat "$WORK/reuse.out")"
grep -q 'event=refused status=401' "$WORK/reuse.out" || fail "no status in: $(cat "$WORK/reuse.out")"
grep -q 'code=' "$WORK/reuse.out" || fail "no API error code"
[ "$(snapshot "$ADIR")" = "$BEFORE" ] || fail "reused token changed the directory"
[ "$(sha256sum <"$ADIR/agent.json")" = "$SUM" ] || fail "config changed"
ok "reused token refused (exit 3), nothing written"

# --- a tampered CA pin: refused before the secret is sent -------------------
T2=$(token)
ZERO_PIN=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
TAMPERED=$(python3 -c 'import sys; p=sys.argv[1].split(".",3); p[2]=sys.argv[2]; print(".".join(p))' "$T2" "$ZERO_PIN")
ADIR2="$WORK/agent2"
mkdir -p "$ADIR2"
set +e
"$AG" enroll "$TAMPERED" --name edge-2 --config "$ADIR2/agent.json" >"$WORK/pin.out" 2>&1
RC=$?
set -e
[ "$RC" = 3 ] || fail "tampered pin: exit $RC, want 3: $(cat "$WORK/pin.out")"
grep -q 'pinned' "$WORK/pin.out" || fail "no pin message: $(cat "$WORK/pin.out")"
[ -z "$(ls -A "$ADIR2")" ] || fail "tampered pin left files: $(ls "$ADIR2")"
# The token was never presented, so it still works.
echo "$T2" | "$AG" enroll - --name edge-2 --config "$ADIR2/agent.json" \
  >"$WORK/pin2.out" 2>&1 || fail "token unusable after a pin refusal: $(cat "$WORK/pin2.out")"
[ "$(stat -c %a "$ADIR2/agent.json")" = 600 ] || fail "new config not 0600"
ok "tampered pin refused (exit 3) without spending the token"

# --- the right CA, but a certificate that does not name the URL's host ------
T5=$(token)
OTHER_HOST=$(python3 -c 'import sys; print(sys.argv[1].replace("https://127.0.0.1:", "https://localhost:"))' "$T5")
BEFORE=$(snapshot "$ADIR2")
set +e
"$AG" enroll "$OTHER_HOST" --name edge-5 --config "$ADIR2/other.json" >"$WORK/host.out" 2>&1
RC=$?
set -e
[ "$RC" = 3 ] || fail "unnamed host: exit $RC, want 3: $(cat "$WORK/host.out")"
grep -q 'does not name the host' "$WORK/host.out" || fail "no host message: $(cat "$WORK/host.out")"
[ "$(snapshot "$ADIR2")" = "$BEFORE" ] || fail "unnamed host changed the directory"
echo "$T5" | "$AG" enroll - --name edge-5 --config "$ADIR2/other.json" >/dev/null 2>&1 \
  || fail "token spent by a refused host"
ok "a certificate not naming the URL's host refused (exit 3) without spending the token"

# --- local errors: exit 2 and no token spent ------------------------------------
set +e
"$AG" enroll "atun2.x" --name e >"$WORK/bad.out" 2>&1; RC1=$?
"$AG" enroll "$(token)" --name "bad name" >/dev/null 2>&1; RC2=$?
"$AG" enroll "$(token)" --name e --advertise-subnets 10.0.0.1/8 >/dev/null 2>&1; RC3=$?
echo '{"deny": ["10.0.0.1/8"]}' >"$WORK/broken.json"
T3=$(token)
"$AG" enroll "$T3" --name e --config "$WORK/broken.json" >"$WORK/broken.out" 2>&1; RC4=$?
set -e
[ "$RC1$RC2$RC3$RC4" = 2222 ] || fail "usage errors exit $RC1 $RC2 $RC3 $RC4, want 2 each"
grep -q 'unsupported version' "$WORK/bad.out" || fail "bad string message: $(cat "$WORK/bad.out")"
grep -q 'host bits' "$WORK/broken.out" || fail "broken config message: $(cat "$WORK/broken.out")"
[ "$(ls "$WORK" | grep -c '^agent-')" = 0 ] || fail "files left beside the broken config"
echo "$T3" | "$AG" enroll - --name e3 --config "$WORK/agent3.json" >/dev/null 2>&1 \
  || fail "token spent by a local error"
ok "usage and config errors exit 2 before the gateway is asked"

# --- the API unreachable: exit 1, the key removed again ----------------------------
kill -TERM "$PID_gw"
wait "$PID_gw" || true
T4=$(python3 -c 'import sys; p=sys.argv[1].split(".",3); print(".".join(p[:3]) + ".https://127.0.0.1:" + sys.argv[2])' "$T1" "$API_PORT")
ADIR4="$WORK/agent4"
mkdir -p "$ADIR4"
set +e
"$AG" enroll "$T4" --name e4 --config "$ADIR4/agent.json" --timeout 5s >"$WORK/down.out" 2>&1
RC=$?
set -e
[ "$RC" = 1 ] || fail "unreachable API: exit $RC, want 1: $(cat "$WORK/down.out")"
grep -q 'cannot connect' "$WORK/down.out" || fail "no connect message: $(cat "$WORK/down.out")"
[ -z "$(ls -A "$ADIR4")" ] || fail "unreachable API left files: $(ls "$ADIR4")"
ok "unreachable API exits 1 and leaves nothing"
