# atun-gateway's command line without the daemon: --help/--version
# everywhere, exit codes, `init` (files, modes, refusal to overwrite a CA,
# --force) and `token create` (one enrollment string that decodes to the
# CA pin and API URL init printed).
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"

expect_rc() { # expect_rc WANT CMD... : runs CMD, checks its exit code
  local want="$1"; shift
  local rc=0
  "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  [ "$rc" = "$want" ] || { cat "$WORK/out" "$WORK/err" >&2; fail "exit $rc, wanted $want: $*"; }
}

mode_of() { stat -c %a "$1"; }

# --- help and version on every command ---------------------------------------
for args in "--help" "init --help" "token --help" "token create --help" "run --help"; do
  # shellcheck disable=SC2086
  expect_rc 0 "$GW" $args
  grep -q "Usage: atun-gateway" "$WORK/out" || fail "no usage for: $args"
done
grep -q "Exit codes" <("$GW" --help) || fail "--help does not list exit codes"
for args in "--version" "init --version" "token create --version" "run --version"; do
  # shellcheck disable=SC2086
  expect_rc 0 "$GW" $args
  grep -Eq "^atun-gateway [0-9]+\.[0-9]+\.[0-9]+$" "$WORK/out" || fail "bad version for: $args"
done
ok "help and version"

# --- usage errors: exit 2 --------------------------------------------------------
expect_rc 2 "$GW"
expect_rc 2 "$GW" frobnicate
expect_rc 2 "$GW" init --hostname a.example
expect_rc 2 "$GW" init --state-dir "$WORK/x"
expect_rc 2 "$GW" init --state-dir "$WORK/x" --hostname "bad_name!"
expect_rc 2 "$GW" init --state-dir "$WORK/x" --ip 300.1.1.1
expect_rc 2 "$GW" init --state-dir "$WORK/x" --hostname a.example --api-listen nope
expect_rc 2 "$GW" init --state-dir "$WORK/x" --hostname a.example --bogus
expect_rc 2 "$GW" token
expect_rc 2 "$GW" token create
expect_rc 2 "$GW" token create --config /nonexistent --ttl 5fortnights
expect_rc 2 "$GW" token create --config /nonexistent --ttl 31d
expect_rc 2 "$GW" run
[ ! -e "$WORK/x" ] || fail "a refused init left $WORK/x behind"
ok "usage errors exit 2"

# --- init --------------------------------------------------------------------------
D="$WORK/state"
expect_rc 0 "$GW" init --state-dir "$D" --hostname gw.example.com --ip 127.0.0.1 \
  --api-listen 127.0.0.1:18443 --quic-listen 127.0.0.1:14433
cp "$WORK/out" "$WORK/init.out"
for f in ca.key server.key gateway.json gateway.db; do
  [ "$(mode_of "$D/$f")" = 600 ] || fail "$f has mode $(mode_of "$D/$f"), wanted 600"
done
for f in ca.crt server.crt; do
  [ "$(mode_of "$D/$f")" = 644 ] || fail "$f has mode $(mode_of "$D/$f"), wanted 644"
done
[ "$(mode_of "$D")" = 700 ] || fail "state dir has mode $(mode_of "$D")"
[ -z "$(find "$D" -name '*.tmp*' -o -name '.*' -type f)" ] || fail "temporary files left in $D"
PIN=$(awk '$1 == "ca_spki_sha256" {print $2}' "$WORK/init.out")
URL=$(awk '$1 == "api_url" {print $2}' "$WORK/init.out")
ADMIN=$(awk '$1 == "admin_token" {print $2}' "$WORK/init.out")
[[ "$PIN" =~ ^[0-9a-f]{64}$ ]] || fail "no CA pin printed: $PIN"
[ "$URL" = "https://gw.example.com:18443" ] || fail "api_url $URL"
[[ "$ADMIN" =~ ^atunadm_[A-Za-z0-9_-]{43}$ ]] || fail "no admin token printed"
# The pin is the SHA-256 of the CA certificate's SubjectPublicKeyInfo.
if command -v openssl >/dev/null; then
  want=$(openssl x509 -in "$D/ca.crt" -pubkey -noout | openssl pkey -pubin -outform DER |
         sha256sum | cut -d' ' -f1)
  [ "$want" = "$PIN" ] || fail "printed pin $PIN, CA SPKI hashes to $want"
  openssl x509 -in "$D/server.crt" -noout -ext subjectAltName | grep -q "DNS:gw.example.com" ||
    fail "server certificate lacks the host name"
  openssl x509 -in "$D/server.crt" -noout -ext subjectAltName | grep -q "IP Address:127.0.0.1" ||
    fail "server certificate lacks the address"
  openssl verify -CAfile "$D/ca.crt" "$D/server.crt" >/dev/null || fail "server cert not from CA"
fi
# The admin token's hash is what the config holds.
H=$(printf %s "$ADMIN" | sha256sum | cut -d' ' -f1)
grep -q "\"sha256\": \"$H\"" "$D/gateway.json" || fail "config lacks the admin token hash"
ok "init creates the files with their modes"

# --- init refuses to replace a CA; --force replaces it -----------------------------
before=$(sha256sum "$D/ca.key" "$D/gateway.json")
expect_rc 3 "$GW" init --state-dir "$D" --hostname other.example
grep -q "already holds a CA" "$WORK/err" || fail "no reason given for the refusal"
[ "$before" = "$(sha256sum "$D/ca.key" "$D/gateway.json")" ] || fail "refused init changed files"
D2="$WORK/state2"
expect_rc 0 "$GW" init --state-dir "$D2" --hostname a.example
oldkey=$(sha256sum < "$D2/ca.key")
expect_rc 0 "$GW" init --state-dir "$D2" --hostname b.example --force
[ "$oldkey" != "$(sha256sum < "$D2/ca.key")" ] || fail "--force kept the old CA key"
[ "$(mode_of "$D2/ca.key")" = 600 ] || fail "--force changed the key mode"
grep -q '"b.example"' "$D2/gateway.json" || fail "--force did not rewrite the config"
ok "init refuses to overwrite, --force replaces"

# --- token create --------------------------------------------------------------------
expect_rc 0 "$GW" token create --config "$D/gateway.json" --ttl 1h --name first
[ "$(wc -l < "$WORK/out")" = 1 ] || fail "token create printed more than one line"
S=$(cat "$WORK/out")
python3 - "$S" "$PIN" "$URL" <<'EOF' || fail "enrollment string does not decode: $S"
import base64, sys
s, pin, url = sys.argv[1:]
prefix, secret, b64pin, rest = s.split(".", 3)
assert prefix == "atun1", prefix
assert len(secret) == 43 and len(base64.urlsafe_b64decode(secret + "=")) == 32
assert base64.urlsafe_b64decode(b64pin + "=").hex() == pin, "pin"
assert rest == url, rest
EOF
expect_rc 0 "$GW" token create --config "$D/gateway.json"
S2=$(cat "$WORK/out")
[ "$S" != "$S2" ] || fail "two tokens with one secret"
expect_rc 2 "$GW" token create --config "$D/gateway.json" --name "$(printf 'bad\001name')"
expect_rc 2 "$GW" token create --config "$D/gateway.json" --name "$(head -c 65 /dev/zero | tr '\0' a)"
# The store keeps hashes only: the secret is nowhere in the state directory.
SECRET=$(cut -d. -f2 <<<"$S")
! grep -rqF "$SECRET" "$D" || fail "the token secret was stored"
ok "token create prints one enrollment string"

# --- state and config errors ------------------------------------------------------------
mkdir -p "$WORK/empty"
sed "s#\"state_dir\": \"[^\"]*\"#\"state_dir\": \"$WORK/empty\"#" "$D/gateway.json" > "$WORK/empty.json"
expect_rc 3 "$GW" token create --config "$WORK/empty.json"
grep -q "init" "$WORK/err" || fail "no hint to run init"
echo '{"state_dir": 5}' > "$WORK/bad.json"
expect_rc 2 "$GW" token create --config "$WORK/bad.json"
grep -q "state_dir" "$WORK/err" || fail "config error does not name the key"
echo '{ not json' > "$WORK/bad.json"
expect_rc 2 "$GW" token create --config "$WORK/bad.json"
expect_rc 2 "$GW" token create --config "$WORK/missing.json"
expect_rc 3 "$GW" run --config "$WORK/empty.json"
ok "state errors exit 3, config errors exit 2"
