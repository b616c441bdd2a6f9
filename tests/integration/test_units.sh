# dist/ as an operator would use it, without a systemd to run it:
#   - both units pass `systemd-analyze verify` with their ExecStart pointing
#     at the binaries of this build (verify refuses a missing binary), also
#     with the privileged-port drop-in, and stay within an exposure budget
#     of `systemd-analyze security`;
#   - the hardening, restart and stop settings the operations guide relies
#     on are present;
#   - sysusers.d and tmpfiles.d snippets make the users and directories the
#     units name (applied to a scratch root);
#   - the sample configs are accepted by the daemons: the gateway runs on
#     its sample, an agent enrolls on top of its sample and comes online,
#     the units' ExecReload reloads both, and each drains within the unit's
#     TimeoutStopSec.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"
command -v systemd-analyze >/dev/null ||
  fail "systemd-analyze missing (Debian package systemd, installed by ci/deps.sh)"

DIST="$SRC/dist"
UNITS=(atun-gateway atun-agent)
# The exposure `systemd-analyze security` reports, in tenths: 2.0 and above
# means a hardening setting went missing (systemd 252 rates the units 1.2
# and 1.1; with the privileged-port drop-in the gateway is 1.4).
EXPOSURE_MAX=20

# unit_value UNIT KEY : the value of the last KEY= line of dist's UNIT.
unit_value() {
  sed -n "s/^$2=//p" "$DIST/systemd/$1.service" | tail -n 1
}

# seconds DURATION : systemd's "45s", "2min" or "45" as whole seconds.
seconds() {
  case "$1" in
    *min) echo $(( ${1%min} * 60 )) ;;
    *s) echo "${1%s}" ;;
    *[!0-9]*|"") fail "unexpected duration '$1'" ;;
    *) echo "$1" ;;
  esac
}

# json_get FILE EXPR : evaluates a Python expression over the JSON file (d).
json_get() {
  python3 -c 'import json,sys; print(eval(sys.argv[2], {"d": json.load(open(sys.argv[1]))}))' "$1" "$2"
}

# duration_s TEXT : a config duration ("30s", "5m", 2500) as seconds, rounded up.
duration_s() {
  python3 - "$1" <<'EOF'
import math, re, sys
v = sys.argv[1]
m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", v)
assert m, v
scale = {None: 0.001, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
print(math.ceil(int(m.group(1)) * scale))
EOF
}

# --- verify: the units as shipped, pointed at this build ----------------------------
mkdir -p "$WORK/units"
for u in "${UNITS[@]}"; do
  grep -q "^ExecStart=/usr/local/bin/$u " "$DIST/systemd/$u.service" ||
    fail "$u.service: ExecStart does not start /usr/local/bin/$u"
  sed "s#/usr/local/bin/#$BUILD/#g" "$DIST/systemd/$u.service" >"$WORK/units/$u.service"
done
# verify prints a warning for an unknown key or section and still exits 0:
# any output at all fails the test.
verify() { # verify UNIT_FILE...
  local rc=0
  systemd-analyze verify "$@" >"$WORK/verify.out" 2>&1 || rc=$?
  [ "$rc" = 0 ] && [ ! -s "$WORK/verify.out" ] ||
    { cat "$WORK/verify.out" >&2; fail "systemd-analyze verify $* (exit $rc)"; }
}
verify "$WORK/units/atun-gateway.service" "$WORK/units/atun-agent.service"
ok "systemd-analyze verify passes on both units"

# The check is not blind: a missing binary and an unknown key both fail it.
sed "s#^ExecStart=$BUILD/#ExecStart=$WORK/nowhere/#" "$WORK/units/atun-agent.service" \
  >"$WORK/broken.service"
! systemd-analyze verify "$WORK/broken.service" >/dev/null 2>&1 ||
  fail "verify accepted a unit whose binary does not exist"
sed 's/^UMask=0077$/UMask=0077\nProtectEverything=yes/' "$WORK/units/atun-agent.service" \
  >"$WORK/broken.service"
systemd-analyze verify "$WORK/broken.service" 2>&1 | grep -q "Unknown key" ||
  fail "verify said nothing about an unknown key"
rm "$WORK/broken.service"
ok "verify fails on a missing binary and warns on an unknown key"

for u in "${UNITS[@]}"; do
  systemd-analyze security --offline=yes --threshold="$EXPOSURE_MAX" "$WORK/units/$u.service" \
    >"$WORK/security.out" 2>&1 || { cat "$WORK/security.out" >&2; fail "$u exposure too high"; }
  grep "Overall exposure" "$WORK/security.out"
done

# The drop-in that opens ports below 1024 (verify reads drop-ins from the
# directory next to the unit).
mkdir -p "$WORK/units/atun-gateway.service.d"
cp "$DIST/systemd/privileged-port.conf" "$WORK/units/atun-gateway.service.d/"
verify "$WORK/units/atun-gateway.service"
systemd-analyze security --offline=yes --threshold="$EXPOSURE_MAX" \
  "$WORK/units/atun-gateway.service" >"$WORK/security.out" 2>&1 ||
  { cat "$WORK/security.out" >&2; fail "gateway exposure with privileged-port.conf too high"; }
grep -q "CAP_NET_BIND_SERVICE" "$DIST/systemd/privileged-port.conf" || fail "drop-in lost its capability"
rm -r "$WORK/units/atun-gateway.service.d"
ok "privileged-port.conf verifies and keeps the exposure budget"

# --- the settings the operations guide promises -----------------------------------------
for u in "${UNITS[@]}"; do
  f="$DIST/systemd/$u.service"
  for line in "User=$u" "Group=$u" "StateDirectory=$u" "StateDirectoryMode=0700" \
      "ConfigurationDirectory=atun" "ConfigurationDirectoryMode=0755" "UMask=0077" \
      "Type=exec" "ExecReload=/bin/kill -HUP \$MAINPID" "KillSignal=SIGTERM" \
      "Restart=on-failure" "CapabilityBoundingSet=" "AmbientCapabilities=" \
      "NoNewPrivileges=yes" "ProtectSystem=strict" "ProtectHome=yes" "PrivateTmp=yes" \
      "PrivateDevices=yes" "ProtectKernelTunables=yes" "ProtectKernelModules=yes" \
      "ProtectKernelLogs=yes" "ProtectControlGroups=yes" \
      "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" "RestrictNamespaces=yes" \
      "LockPersonality=yes" "MemoryDenyWriteExecute=yes" "SystemCallArchitectures=native" \
      "SystemCallFilter=@system-service" "WantedBy=multi-user.target"; do
    grep -qxF "$line" "$f" || fail "$u.service lacks '$line'"
  done
  ! grep -q "^DynamicUser=" "$f" || fail "$u.service uses DynamicUser="
  [ "$(unit_value "$u" ExecStart)" = "/usr/local/bin/$u run --config /etc/atun/${u#atun-}.json" ] ||
    fail "$u.service: ExecStart $(unit_value "$u" ExecStart)"
  [ "$(unit_value "$u" LimitNOFILE)" -ge 16384 ] || fail "$u.service: LimitNOFILE too low"
  [ "$(seconds "$(unit_value "$u" RestartSec)")" -ge 1 ] || fail "$u.service: RestartSec below 1s"
  [ "$(unit_value "$u" RestartPreventExitStatus | cut -d' ' -f1)" = 2 ] ||
    fail "$u.service: a configuration error (exit 2) would restart forever"
done
ok "units carry the hardening, restart and stop settings"

# --- sysusers.d and tmpfiles.d, applied to a scratch root -------------------------------
check_users_and_dirs() {
  local R="$WORK/root" u ent uid gid
  mkdir -p "$R/etc"
  systemd-sysusers --root "$R" "$DIST/sysusers.d/atun.conf" >/dev/null 2>&1 ||
    fail "systemd-sysusers refused sysusers.d/atun.conf"
  for u in "${UNITS[@]}"; do
    ent=$(grep "^$u:" "$R/etc/passwd") || fail "sysusers made no user $u"
    [ "$(echo "$ent" | cut -d: -f6)" = "/var/lib/$u" ] || fail "$u: home is not its state dir"
    [ "$(echo "$ent" | cut -d: -f7)" = /usr/sbin/nologin ] || fail "$u: has a login shell"
    [ "$(echo "$ent" | cut -d: -f3)" -lt 1000 ] || fail "$u: not a system user"
    grep -q "^$u:" "$R/etc/group" || fail "sysusers made no group $u"
  done
  systemd-tmpfiles --root "$R" --create "$DIST/tmpfiles.d/atun.conf" >"$WORK/tmpfiles.out" 2>&1 ||
    { cat "$WORK/tmpfiles.out" >&2; fail "systemd-tmpfiles refused tmpfiles.d/atun.conf"; }
  for u in "${UNITS[@]}"; do
    uid=$(grep "^$u:" "$R/etc/passwd" | cut -d: -f3)
    gid=$(grep "^$u:" "$R/etc/group" | cut -d: -f3)
    [ "$(stat -c '%a %u %g' "$R/var/lib/$u")" = "700 $uid $gid" ] ||
      fail "/var/lib/$u: $(stat -c '%a %u %g' "$R/var/lib/$u"), wanted 700 $uid $gid"
  done
  [ "$(stat -c '%a %u' "$R/etc/atun")" = "755 0" ] || fail "/etc/atun not 0755 root"
  ok "sysusers.d and tmpfiles.d make the users and directories the units name"
}
# tmpfiles must chown to the new users: root only.
if [ "$(id -u)" = 0 ]; then
  check_users_and_dirs
else
  echo "skipped: sysusers.d and tmpfiles.d (needs root)"
fi

# --- the sample configs, run by the daemons ------------------------------------------------
# The samples name the units' directories.
[ "$(json_get "$DIST/config/gateway.json" 'd["state_dir"]')" = /var/lib/atun-gateway ] ||
  fail "gateway sample: state_dir is not the unit's StateDirectory"
for k in key_file cert_file ca_file; do
  [[ "$(json_get "$DIST/config/agent.json" "d['$k']")" == /var/lib/atun-agent/* ]] ||
    fail "agent sample: $k is not in the unit's StateDirectory"
done

# The units' stop timeout leaves room for the samples' drains (the agent
# adds 2 s of grace to its drain_timeout).
gw_stop=$(seconds "$(unit_value atun-gateway TimeoutStopSec)")
ag_stop=$(seconds "$(unit_value atun-agent TimeoutStopSec)")
gw_drain=$(duration_s "$(json_get "$DIST/config/gateway.json" 'd["drain_timeout"]')")
ag_drain=$(duration_s "$(json_get "$DIST/config/agent.json" 'd["drain_timeout"]')")
[ "$gw_stop" -ge $(( gw_drain + 5 )) ] ||
  fail "gateway TimeoutStopSec=${gw_stop}s leaves no room for drain_timeout ${gw_drain}s"
[ "$ag_stop" -ge $(( ag_drain + 2 + 5 )) ] ||
  fail "agent TimeoutStopSec=${ag_stop}s leaves no room for drain_timeout ${ag_drain}s + 2s"
ok "TimeoutStopSec above the drain timeouts (gateway ${gw_stop}s > ${gw_drain}s, agent ${ag_stop}s > ${ag_drain}s)"

# exec_line UNIT KEY CONFIG : the unit's command with this build's binary and
# CONFIG for the /etc/atun path, as an array in CMD.
exec_line() {
  local line
  line=$(unit_value "$1" "$2")
  line=${line//\/usr\/local\/bin\//$BUILD/}
  line=${line//\/etc\/atun\/${1#atun-}.json/$3}
  read -r -a CMD <<<"$line"
}

API_PORT=$(free_port)
QUIC_PORT=$(free_port)
SOCKS_PORT=$(free_port)
D="$WORK/gw-state"
"$GW" init --state-dir "$D" --hostname gw.example.com --ip 127.0.0.1 >"$WORK/init.out"
ADMIN=$(awk '$1 == "admin_token" {print $2}' "$WORK/init.out")
[ -n "$ADMIN" ] || fail "init printed no admin token"
# The sample as it stands, except what a test on loopback must change: the
# state directory, the ports, the addresses agents are told, and one admin
# token (the sample has none) to read the agent's status.
GCFG="$WORK/gateway.json"
python3 - "$DIST/config/gateway.json" "$GCFG" "$D" "$API_PORT" "$QUIC_PORT" "$SOCKS_PORT" \
  "$(printf %s "$ADMIN" | sha256sum | cut -d' ' -f1)" <<'EOF'
import json, sys
src, dst, state, api, quic, socks, sha = sys.argv[1:]
cfg = json.load(open(src))
assert cfg["admin_tokens"] == [], "the sample must not ship an admin token"
cfg.update(state_dir=state, api_listen=f"127.0.0.1:{api}", quic_listen=f"127.0.0.1:{quic}",
           api_public_url=f"https://127.0.0.1:{api}", quic_public_endpoint=f"127.0.0.1:{quic}")
cfg["socks5"]["listen"] = f"127.0.0.1:{socks}"
cfg["admin_tokens"] = [{"name": "test", "sha256": sha, "scopes": ["read"]}]
json.dump(cfg, open(dst, "w"), indent=2)
EOF
chmod 0600 "$GCFG"

B="https://127.0.0.1:$API_PORT"
api() { curl -s --max-time 5 --cacert "$D/ca.crt" -H "Authorization: Bearer $ADMIN" "$B$1"; }
exec_line atun-gateway ExecStart "$GCFG"
start gw "${CMD[@]}"
WAIT_S=15 wait_for curl -sf --max-time 2 --cacert "$D/ca.crt" "$B/health/ready" ||
  { cat "$WORK/gw.log"; fail "gateway not ready on its sample config"; }
! grep -q "config_warning" "$WORK/gw.log" || { cat "$WORK/gw.log"; fail "gateway warns about its sample"; }
ok "the gateway runs on its sample config"

# An agent config starts as the sample (mode 0640, as the guide installs it)
# and enrollment merges into it.
mkdir -p "$WORK/etc" "$WORK/agent-state"
chmod 0700 "$WORK/agent-state"
ACFG="$WORK/etc/agent.json"
install -m 0640 "$DIST/config/agent.json" "$ACFG"
# The sample alone: parsed, and refused only for not being enrolled.
rc=0
"$AG" run --config "$ACFG" >"$WORK/unenrolled.log" 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q "event=not_enrolled" "$WORK/unenrolled.log" ||
  { cat "$WORK/unenrolled.log"; fail "unenrolled sample: exit $rc, wanted 2 and not_enrolled"; }
"$GW" token create --config "$GCFG" --ttl 10m 2>"$WORK/token.err" |
  "$AG" enroll - --name sample-agent --config "$ACFG" --state-dir "$WORK/agent-state" \
    --advertise-subnets 10.99.0.0/16 >"$WORK/enroll.out" 2>&1 ||
  { cat "$WORK/token.err" "$WORK/enroll.out"; fail "enroll on the sample config"; }
[ "$(stat -c %a "$ACFG")" = 640 ] || fail "enrollment changed the config's mode to $(stat -c %a "$ACFG")"
ID=$(json_get "$ACFG" 'd["agent_id"]')
[[ "$(json_get "$ACFG" 'd["key_file"]')" == "$WORK/agent-state/"* ]] ||
  fail "enrollment did not put the key into --state-dir"
[ "$(json_get "$ACFG" 'd["deny"]')" = "$(json_get "$DIST/config/agent.json" 'd["deny"]')" ] ||
  fail "enrollment lost the sample's deny list"
exec_line atun-agent ExecStart "$ACFG"
start ag "${CMD[@]}"
is_online() { api "/jet/agent-tunnel/agents/$ID" | grep -q '"status": *"online"'; }
WAIT_S=15 wait_for is_online || { cat "$WORK/ag.log"; fail "agent on its sample config not online"; }
! grep -q "config_warning" "$WORK/ag.log" || { cat "$WORK/ag.log"; fail "agent warns about its config"; }
ok "an agent enrolled on top of its sample config comes online"

# ExecReload, as the units run it.  Both daemons log an event named
# *reload* (config_reloaded, reloaded, or *reload_failed* at level error).
reloads() { grep -c "reload" "$1" || true; }
reloaded_since() { [ "$(reloads "$1")" -gt "$2" ]; }
for u in gw ag; do
  unit=atun-gateway
  [ "$u" = ag ] && unit=atun-agent
  pid_var="PID_$u"
  before=$(reloads "$WORK/$u.log")
  reload=$(unit_value "$unit" ExecReload)
  ${reload//\$MAINPID/${!pid_var}}
  WAIT_S=5 wait_for reloaded_since "$WORK/$u.log" "$before" ||
    { cat "$WORK/$u.log"; fail "$unit: ExecReload logged no reload"; }
  grep "reload" "$WORK/$u.log" | tail -n 1 | grep -q "level=info" ||
    { cat "$WORK/$u.log"; fail "$unit: the reload of its config failed"; }
  kill -0 "${!pid_var}" || fail "$unit died on ExecReload"
done
WAIT_S=5 wait_for is_online || fail "agent not online after the reloads"
ok "ExecReload reloads both daemons and they stay up"

# Stop as systemd would: KillSignal, then the exit within TimeoutStopSec.
# The gateway first, with the agent connected; then the agent.
stop_within() { # stop_within NAME UNIT SECONDS
  local pid_var="PID_$1" rc=0 t0 ms
  local sig
  sig=$(unit_value "$2" KillSignal)
  t0=$(date +%s%N)
  kill -s "${sig#SIG}" "${!pid_var}"
  local deadline=$(( t0 + $3 * 1000000000 ))
  while kill -0 "${!pid_var}" 2>/dev/null; do
    [ "$(date +%s%N)" -lt "$deadline" ] || { cat "$WORK/$1.log"; fail "$2 still running after ${3}s"; }
    sleep 0.1
  done
  wait "${!pid_var}" || rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ "$rc" = 0 ] || { cat "$WORK/$1.log"; fail "$2 exited $rc on $sig"; }
  echo "$2 stopped in $ms ms (TimeoutStopSec=${3}s)"
}
stop_within gw atun-gateway "$gw_stop"
stop_within ag atun-agent "$ag_stop"
for f in "$WORK/gw.log" "$WORK/ag.log"; do
  ! grep -E "AddressSanitizer|LeakSanitizer|runtime error" "$f" || fail "sanitizer report in $f"
done
ok "both daemons stop on KillSignal within TimeoutStopSec, exit 0"
