# The management API of a running gateway, endpoint by endpoint: success
# and error cases, authentication and scopes, body limits, the enrollment
# rate limit, metrics text, SIGHUP reload of admin tokens and a clean exit
# on SIGTERM.  Enrollment uses a CSR made by openssl (the agent's own
# enrollment is tested in test_gateway_agent.sh).
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
command -v openssl >/dev/null || fail "openssl is needed to make CSRs"

API_PORT=$(free_port)
QUIC_PORT=$(free_port)
D="$WORK/state"
CA="$D/ca.crt"
B="https://127.0.0.1:$API_PORT"
P="$B/jet/agent-tunnel"

"$GW" init --state-dir "$D" --hostname localhost --ip 127.0.0.1 \
  --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" >"$WORK/init.out"
ADMIN=$(awk '$1 == "admin_token" {print $2}' "$WORK/init.out")
READER="reader-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WRITER="writer-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# A read-only and a write-only token next to init's admin token; a burst of
# enrollments large enough for the functional cases, refilling slowly.
python3 - "$D/gateway.json" "$READER" "$WRITER" <<'EOF'
import hashlib, json, sys
path, reader, writer = sys.argv[1:]
cfg = json.load(open(path))
for name, secret, scopes in (("reader", reader, ["read"]), ("writer", writer, ["write"])):
    cfg["admin_tokens"].append({"name": name, "scopes": scopes,
                                "sha256": hashlib.sha256(secret.encode()).hexdigest()})
cfg["limits"]["enroll_burst"] = 20
cfg["limits"]["enroll_interval"] = "1h"
cfg["limits"]["api_max_request_bytes"] = 32768
json.dump(cfg, open(path, "w"), indent=2)
EOF

start gw "$GW" run --config "$D/gateway.json"
wait_for curl -sf --max-time 2 --cacert "$CA" "$B/health/ready" || {
  cat "$WORK/gw.log"; fail "gateway not ready"; }
ok "run serves /health/ready"

# req METHOD URL TOKEN [BODY [CONTENT-TYPE]] : sets CODE, the body goes to
# $WORK/body.
req() {
  local args=(-s --max-time 10 --cacert "$CA" -o "$WORK/body" -w '%{http_code}' -X "$1")
  [ -n "$3" ] && args+=(-H "Authorization: Bearer $3")
  if [ "$#" -ge 4 ]; then
    args+=(-H "Content-Type: ${5:-application/json}" --data-binary "$4")
  fi
  CODE=$(curl "${args[@]}" "$2")
}

# expect STATUS [ERROR_CODE] : checks the last response; an error body must
# have exactly the {"error": {"code", "message"}} shape.
expect() {
  [ "$CODE" = "$1" ] || { cat "$WORK/body" >&2; fail "status $CODE, wanted $1 ($2)"; }
  [ "$#" -lt 2 ] && return 0
  python3 - "$WORK/body" "$2" <<'EOF' || { cat "$WORK/body" >&2; fail "error body: wanted $2"; }
import json, sys
d = json.load(open(sys.argv[1]))
assert list(d) == ["error"], d
e = d["error"]
assert sorted(e) == ["code", "message"] and isinstance(e["message"], str) and e["message"], e
assert e["code"] == sys.argv[2], e["code"]
EOF
}

jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
           "$WORK/body" "$1"; }

newcsr() { # newcsr NAME : a P-256 CSR, PEM on stdout
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/$1.key" -subj "/CN=$1" 2>/dev/null
}

enroll_body() { # enroll_body ID NAME CSR_FILE
  python3 -c 'import json,sys; print(json.dumps({"agent_id": sys.argv[1], "agent_name": sys.argv[2],
    "csr_pem": open(sys.argv[3]).read()}))' "$1" "$2" "$3"
}

uuid() { python3 -c 'import uuid; print(uuid.uuid4())'; }

# --- authentication and scopes -------------------------------------------------------------
req GET "$P/agents" ""; expect 401 unauthorized
req GET "$P/agents" "wrong"; expect 401 unauthorized
req GET "$P/agents" "$WRITER"; expect 403 forbidden
req GET "$P/agents" "$READER"; expect 200
req GET "$P/agents" "$ADMIN"; expect 200
[ "$(jget 'len(d["agents"])')" = 0 ] || fail "agents listed before any enrollment"
req POST "$P/tokens" "$READER" '{}'; expect 403 forbidden
req POST "$P/tokens" "" '{}'; expect 401 unauthorized
req GET "$B/metrics" ""; expect 401 unauthorized
curl -s --cacert "$CA" -D "$WORK/hdr" -o /dev/null "$P/agents"
grep -qi '^WWW-Authenticate: Bearer' "$WORK/hdr" || fail "401 without WWW-Authenticate"
ok "bearer tokens and scopes"

# --- POST /tokens ----------------------------------------------------------------------------
req POST "$P/tokens" "$WRITER" '{"ttl":"2h","name":"site-a"}'; expect 201
TOKEN1=$(jget 'd["enrollment_string"]')
[ "$(jget 'd["name"]')" = site-a ] || fail "token name"
[[ "$TOKEN1" == atun1.*".https://localhost:$API_PORT" ]] || fail "enrollment string $TOKEN1"
req POST "$P/tokens" "$ADMIN" '{"ttl":60000}'; expect 201
req POST "$P/tokens" "$ADMIN" ''; expect 201
TOKEN2=$(jget 'd["enrollment_string"]')
req POST "$P/tokens" "$ADMIN" '{"ttl":"31d"}'; expect 400 invalid_field
req POST "$P/tokens" "$ADMIN" '{"ttl":true}'; expect 400 invalid_field
req POST "$P/tokens" "$ADMIN" '{"ttl":-5}'; expect 400 invalid_field
req POST "$P/tokens" "$ADMIN" '{"name":7}'; expect 400 invalid_field
req POST "$P/tokens" "$ADMIN" '{"ttl":"1h"'; expect 400 invalid_json
req POST "$P/tokens" "$ADMIN" '[1]'; expect 400 invalid_json
req POST "$P/tokens" "$ADMIN" '{}' text/plain; expect 415 unsupported_media_type
ok "POST tokens"

# --- POST /enroll ---------------------------------------------------------------------------
SEC1=$(cut -d. -f2 <<<"$TOKEN1")
SEC2=$(cut -d. -f2 <<<"$TOKEN2")
ID1=$(uuid)
newcsr agent1 > "$WORK/agent1.csr"
enroll_body "$ID1" agent1 "$WORK/agent1.csr" > "$WORK/e1.json"
req POST "$P/enroll" "" "@$WORK/e1.json"; expect 401 unauthorized
req POST "$P/enroll" "not-a-secret" "@$WORK/e1.json"; expect 401 unauthorized
req POST "$P/enroll" "$ADMIN" "@$WORK/e1.json"; expect 401 unauthorized
BOGUS=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
req POST "$P/enroll" "$BOGUS" "@$WORK/e1.json"; expect 401 invalid_token
req POST "$P/enroll" "$SEC1" '{"agent_id":'; expect 400 invalid_json
req POST "$P/enroll" "$SEC1" '{"agent_name":"a","csr_pem":"x"}'; expect 400 missing_field
req POST "$P/enroll" "$SEC1" "{\"agent_id\":5,\"agent_name\":\"a\",\"csr_pem\":\"x\"}"
expect 400 invalid_field
req POST "$P/enroll" "$SEC1" "{\"agent_id\":\"NOT-A-UUID\",\"agent_name\":\"a\",\"csr_pem\":\"x\"}"
expect 400 invalid_field
req POST "$P/enroll" "$SEC1" "{\"agent_id\":\"$ID1\",\"agent_name\":\"bad name\",\"csr_pem\":\"x\"}"
expect 400 invalid_field
req POST "$P/enroll" "$SEC1" "{\"agent_id\":\"$ID1\",\"agent_name\":\"a\",\"csr_pem\":\"garbage\"}"
expect 400 invalid_field
# A CSR whose signature does not match its key.
python3 - "$WORK/agent1.csr" > "$WORK/tampered.csr" <<'EOF'
import base64, sys
lines = open(sys.argv[1]).read().split("\n")
body = base64.b64decode("".join(lines[1:-2]))
body = body[:-10] + bytes([body[-10] ^ 1]) + body[-9:]
b = base64.b64encode(body).decode()
print(lines[0]); [print(b[i:i + 64]) for i in range(0, len(b), 64)]; print(lines[-2])
EOF
enroll_body "$ID1" agent1 "$WORK/tampered.csr" > "$WORK/bad.json"
req POST "$P/enroll" "$SEC1" "@$WORK/bad.json"; expect 400 invalid_field
# The token survived every refused attempt: it is consumed only on success.
req POST "$P/enroll" "$SEC1" "@$WORK/e1.json"; expect 200
python3 - "$WORK/body" "$ID1" "$QUIC_PORT" "$CA" "$D/server.crt" <<'EOF' || fail "enroll response"
import json, sys, subprocess, hashlib
d = json.load(open(sys.argv[1]))
assert d["agent_id"] == sys.argv[2] and d["agent_name"] == "agent1"
assert d["quic_endpoint"] == "localhost:" + sys.argv[3], d["quic_endpoint"]
assert d["ca_cert_pem"] == open(sys.argv[4]).read().strip() + "\n" or \
       d["ca_cert_pem"].strip() == open(sys.argv[4]).read().strip()
spki = subprocess.run("openssl x509 -in %s -pubkey -noout | openssl pkey -pubin -outform DER"
                      % sys.argv[5], shell=True, capture_output=True).stdout
assert d["server_spki_sha256"] == hashlib.sha256(spki).hexdigest(), "server pin"
open(sys.argv[1] + ".crt", "w").write(d["client_cert_pem"])
EOF
openssl verify -CAfile "$CA" "$WORK/body.crt" >/dev/null || fail "client cert does not verify"
openssl x509 -in "$WORK/body.crt" -noout -ext subjectAltName | grep -q "URI:atun://agent/$ID1" ||
  fail "client cert lacks the agent URI"
openssl x509 -in "$WORK/body.crt" -noout -subject | grep -q "CN *= *agent1" || fail "client CN"
openssl x509 -in "$WORK/body.crt" -noout -ext extendedKeyUsage | grep -q "Client Authentication" ||
  fail "client cert lacks clientAuth"
# Reuse of the token, and the same id or name with another token.
req POST "$P/enroll" "$SEC1" "@$WORK/e1.json"; expect 401 invalid_token
req POST "$P/enroll" "$SEC2" "@$WORK/e1.json"; expect 409 conflict
enroll_body "$(uuid)" agent1 "$WORK/agent1.csr" > "$WORK/e1b.json"
req POST "$P/enroll" "$SEC2" "@$WORK/e1b.json"; expect 409 conflict
ID2=$(uuid)
newcsr agent2 > "$WORK/agent2.csr"
enroll_body "$ID2" agent2 "$WORK/agent2.csr" > "$WORK/e2.json"
req POST "$P/enroll" "$SEC2" "@$WORK/e2.json"; expect 200
ok "POST enroll"

# --- GET /agents, GET /agents/{id} -------------------------------------------------------------
req GET "$P/agents" "$READER"; expect 200
[ "$(jget 'len(d["agents"])')" = 2 ] || fail "two agents expected"
[ "$(jget 'd["agents"][0]["id"]')" = "$ID1" ] || fail "list order"
[ "$(jget 'd["agents"][0]["status"]')" = offline ] || fail "status of a never connected agent"
[ "$(jget 'd["agents"][0]["last_seen"]')" = None ] || fail "last_seen"
req GET "$P/agents?limit=1" "$READER"; expect 200
[ "$(jget 'len(d["agents"])')" = 1 ] && [ "$(jget 'd["next_offset"]')" = 1 ] || fail "paging"
req GET "$P/agents?limit=1&offset=1" "$READER"; expect 200
[ "$(jget 'd["agents"][0]["id"]')" = "$ID2" ] || fail "offset"
req GET "$P/agents?limit=0" "$READER"; expect 400 invalid_field
req GET "$P/agents?limit=abc" "$READER"; expect 400 invalid_field
req GET "$P/agents/$ID2" "$READER"; expect 200
[ "$(jget 'd["name"]')" = agent2 ] || fail "GET agent name"
req GET "$P/agents/$(uuid)" "$READER"; expect 404 not_found
req GET "$P/agents/not-an-id" "$READER"; expect 404 not_found
req GET "$P/agents/$ID2" ""; expect 401 unauthorized
ok "GET agents"

# --- POST /agents/resolve-target -----------------------------------------------------------------
req POST "$P/agents/resolve-target" "$READER" '{"target":"10.1.2.3"}'; expect 200
[ "$(jget 'd["candidates"]')" = "[]" ] && [ "$(jget 'd["kind"]')" = address ] ||
  fail "resolve with no agents online"
req POST "$P/agents/resolve-target" "$READER" '{"target":"db.corp.example"}'; expect 200
[ "$(jget 'd["kind"]')" = name ] || fail "resolve kind name"
req POST "$P/agents/resolve-target" "$READER" '{"target":"[::1]"}'; expect 200
req POST "$P/agents/resolve-target" "$READER" '{"target":"bad name!"}'; expect 400 invalid_field
req POST "$P/agents/resolve-target" "$READER" '{"target":5}'; expect 400 invalid_field
req POST "$P/agents/resolve-target" "$READER" '{}'; expect 400 missing_field
req POST "$P/agents/resolve-target" "$READER" '{"target":"10.0.0.1","agent":"bad name"}'
expect 400 invalid_field
req POST "$P/agents/resolve-target" "$READER" 'nope'; expect 400 invalid_json
req GET "$P/agents/resolve-target" "$READER"; expect 405 method_not_allowed
req POST "$P/agents/resolve-target" "$WRITER" '{"target":"10.1.2.3"}'; expect 403 forbidden
ok "POST resolve-target"

# --- DELETE /agents/{id} --------------------------------------------------------------------------
req DELETE "$P/agents/$ID2" "$READER"; expect 403 forbidden
req DELETE "$P/agents/$(uuid)" "$ADMIN"; expect 404 not_found
req DELETE "$P/agents/$ID2" "$WRITER"; expect 200
[ "$(jget 'd["status"]')" = revoked ] && [ "$(jget 'd["revoked_at"]')" != None ] ||
  fail "DELETE response"
req DELETE "$P/agents/$ID2" "$ADMIN"; expect 409 already_revoked
req GET "$P/agents/$ID2" "$READER"; expect 200
[ "$(jget 'd["status"]')" = revoked ] || fail "revocation not visible"
# A revoked name is free again.
req POST "$P/tokens" "$ADMIN" '{}'; expect 201
SEC3=$(jget 'd["enrollment_string"]' | cut -d. -f2)
enroll_body "$(uuid)" agent2 "$WORK/agent2.csr" > "$WORK/e3.json"
req POST "$P/enroll" "$SEC3" "@$WORK/e3.json"; expect 200
ok "DELETE agents"

# --- limits: body size, unknown paths ------------------------------------------------------------------
head -c 40000 /dev/zero | tr '\0' ' ' > "$WORK/big.json"
req POST "$P/tokens" "$ADMIN" "@$WORK/big.json"; expect 413 payload_too_large
req GET "$P/nope" "$ADMIN"; expect 404 not_found
req PUT "$P/agents" "$ADMIN" '{}'; expect 405 method_not_allowed
ok "request limits"

# --- metrics -----------------------------------------------------------------------------------------------
req GET "$B/metrics" "$READER"; expect 200
python3 - "$WORK/body" <<'EOF' || fail "metrics text does not parse"
import re, sys
line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"'
                     r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*)?\})? (-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?)$')
samples = {}
for line in open(sys.argv[1]).read().splitlines():
    if line.startswith("# HELP ") or line.startswith("# TYPE "):
        continue
    m = line_re.match(line)
    assert m, "bad line: %r" % line
    samples[line.rsplit(" ", 1)[0]] = float(m.group(5))
def want(key, value):
    assert samples.get(key) == value, "%s = %s, wanted %s" % (key, samples.get(key), value)
want('atun_gateway_agents{status="offline"}', 2)
want('atun_gateway_agents{status="revoked"}', 1)
want('atun_gateway_agents{status="online"}', 0)
want('atun_gateway_enrollments_total{result="ok"}', 3)
want('atun_gateway_enrollments_total{result="conflict"}', 2)
want('atun_gateway_revocations_total', 1)
assert samples['atun_gateway_enrollments_total{result="bad_token"}'] >= 5
assert samples['atun_gateway_api_requests_total{code="401"}'] >= 5
assert samples['atun_gateway_api_requests_total{code="413"}'] == 1
for r in ("unknown_ca", "revoked", "bad_certificate", "timeout"):
    assert 'atun_gateway_handshake_failures_total{reason="%s"}' % r in samples, r
EOF
ok "metrics text parses"

# --- enrollment rate limit ----------------------------------------------------------------------------------
got429=0
for _ in $(seq 25); do
  req POST "$P/enroll" "$BOGUS" "@$WORK/e1.json"
  if [ "$CODE" = 429 ]; then got429=1; break; fi
  expect 401 invalid_token
done
[ "$got429" = 1 ] || fail "no 429 after the enrollment burst"
expect 429 too_many_requests
curl -s --cacert "$CA" -D "$WORK/hdr" -o /dev/null -X POST -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $BOGUS" --data-binary "@$WORK/e1.json" "$P/enroll"
grep -qi '^Retry-After: [0-9]' "$WORK/hdr" || fail "429 without Retry-After"
# Other endpoints are not limited.
req GET "$P/agents" "$READER"; expect 200
ok "enrollment rate limit"

# --- SIGHUP: admin tokens and log level -----------------------------------------------------------------------
python3 - "$D/gateway.json" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["admin_tokens"] = [t for t in cfg["admin_tokens"] if t["name"] != "reader"]
cfg["log_level"] = "debug"
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
EOF
kill -HUP "$PID_gw"
WAIT_S=5 wait_for grep -q "event=config_reloaded" "$WORK/gw.log" || fail "no reload logged"
req GET "$P/agents" "$READER"; expect 401 unauthorized
req GET "$P/agents" "$ADMIN"; expect 200
WAIT_S=5 wait_for grep -q "event=api_request" "$WORK/gw.log" || fail "debug level not applied"
echo '{ broken' > "$D/gateway.json"
kill -HUP "$PID_gw"
WAIT_S=5 wait_for grep -q "event=config_reload_failed" "$WORK/gw.log" || fail "bad reload not logged"
req GET "$P/agents" "$ADMIN"; expect 200
ok "SIGHUP reloads admin tokens and log level"

# --- logs: one line per event, no secrets ---------------------------------------------------------------------
grep -q "event=agent_enrolled agent_id=$ID1 agent_name=agent1" "$WORK/gw.log" || fail "enroll log"
grep -q "event=agent_revoked agent_id=$ID2" "$WORK/gw.log" || fail "revoke log"
for s in "$ADMIN" "$READER" "$WRITER" "$SEC1" "$SEC2" "$SEC3" "$BOGUS"; do
  ! grep -qF "$s" "$WORK/gw.log" || fail "a secret is in the log"
done
grep -v '^ts=' "$WORK/gw.log" && fail "a log line that is not logfmt"
ok "logs"

# --- SIGTERM: clean exit ------------------------------------------------------------------------------------------
kill -TERM "$PID_gw"
WAIT_S=10 wait_for bash -c "! kill -0 $PID_gw 2>/dev/null" || fail "no exit after SIGTERM"
rc=0; wait "$PID_gw" || rc=$?
[ "$rc" = 0 ] || fail "exit code $rc after SIGTERM"
grep -q "event=gateway_stopped exit=0" "$WORK/gw.log" || fail "no stop line"
ok "SIGTERM exits 0"
