# `cmake --install` into a scratch prefix: every file an operator needs is
# there with a sane mode (programs 0755, the rest 0644, nothing writable by
# group or others, no set-id bit), nothing else is installed, the installed
# units start the installed binaries (rewritten for the prefix, checked by
# `systemd-analyze verify`) and name documentation that exists; then the
# same with DESTDIR staging for a /usr package.
source "$(dirname "$0")/lib.sh"

[ -x "$GW" ] || fail "no $GW"
[ -x "$AG" ] || fail "no $AG"

P="$WORK/prefix"
cmake --install "$BUILD" --prefix "$P" >"$WORK/install.out" 2>&1 ||
  { cat "$WORK/install.out"; fail "cmake --install failed"; }

PROGRAMS=(bin/atun-gateway bin/atun-agent)
[ -x "$BUILD/atun-sim" ] && PROGRAMS+=(bin/atun-sim)
DATA=(
  lib/systemd/system/atun-gateway.service
  lib/systemd/system/atun-agent.service
  lib/sysusers.d/atun.conf
  lib/tmpfiles.d/atun.conf
  share/doc/atun/examples/gateway.json
  share/doc/atun/examples/agent.json
  share/doc/atun/examples/privileged-port.conf
  share/doc/atun/README.md
  share/doc/atun/api.md
  share/doc/atun/config.md
  share/doc/atun/operations.md
  share/doc/atun/protocol.md
)

# --- what is there, with which mode ---------------------------------------------------
for f in "${PROGRAMS[@]}"; do
  [ -f "$P/$f" ] || fail "not installed: $f"
  [ "$(stat -c %a "$P/$f")" = 755 ] || fail "$f has mode $(stat -c %a "$P/$f"), wanted 755"
done
for f in "${DATA[@]}"; do
  [ -f "$P/$f" ] || fail "not installed: $f"
  [ "$(stat -c %a "$P/$f")" = 644 ] || fail "$f has mode $(stat -c %a "$P/$f"), wanted 644"
done
bad=$(find "$P" \( -type f \( -perm -g+w -o -perm -u+s -o -perm -g+s \) \) -o -perm -o+w)
[ -z "$bad" ] || fail "writable by others, or a set-id file: $bad"
ok "${#PROGRAMS[@]} programs (0755) and ${#DATA[@]} files (0644) installed"

# Nothing beyond that list, and the manifest tells the truth.
expected=$(printf '%s\n' "${PROGRAMS[@]}" "${DATA[@]}" | sort)
found=$(cd "$P" && find . -type f | sed 's#^\./##' | sort)
[ "$found" = "$expected" ] ||
  { diff <(echo "$expected") <(echo "$found") >&2 || true; fail "installed files differ from the list"; }
manifest=$(sed "s#^$P/##" "$BUILD/install_manifest.txt" | sort)
[ "$manifest" = "$expected" ] ||
  { diff <(echo "$expected") <(echo "$manifest") >&2 || true; fail "install_manifest.txt differs"; }
ok "nothing else installed; install_manifest.txt lists exactly these"

# --- the installed files are the tree's ----------------------------------------------------
cmp -s "$P/lib/sysusers.d/atun.conf" "$SRC/dist/sysusers.d/atun.conf" || fail "sysusers.d/atun.conf differs"
cmp -s "$P/lib/tmpfiles.d/atun.conf" "$SRC/dist/tmpfiles.d/atun.conf" || fail "tmpfiles.d/atun.conf differs"
for f in gateway.json agent.json; do
  cmp -s "$P/share/doc/atun/examples/$f" "$SRC/dist/config/$f" || fail "examples/$f differs"
done
cmp -s "$P/share/doc/atun/examples/privileged-port.conf" "$SRC/dist/systemd/privileged-port.conf" ||
  fail "examples/privileged-port.conf differs"
for f in api config operations protocol; do
  cmp -s "$P/share/doc/atun/$f.md" "$SRC/docs/$f.md" || fail "$f.md differs"
done
cmp -s "$P/share/doc/atun/README.md" "$SRC/README.md" || fail "README.md differs"
for f in "${PROGRAMS[@]}"; do
  cmp -s "$P/$f" "$BUILD/${f#bin/}" || fail "$f is not the built binary"
done
"$P/bin/atun-gateway" --version | grep -Eqx "atun-gateway [0-9]+\.[0-9]+\.[0-9]+" ||
  fail "installed atun-gateway --version"
"$P/bin/atun-agent" --version | grep -Eqx "atun-agent [0-9]+\.[0-9]+\.[0-9]+" ||
  fail "installed atun-agent --version"
ok "installed copies match the tree and the installed programs run"

# --- the units, rewritten for the prefix ----------------------------------------------------
# check_units ROOT PREFIX : the units under ROOT/PREFIX start PREFIX/bin and
# differ from the tree's only by that prefix.
check_units() {
  local root="$1" prefix="$2" u f doc
  for u in atun-gateway atun-agent; do
    f="$root$prefix/lib/systemd/system/$u.service"
    grep -qx "ExecStart=$prefix/bin/$u run --config /etc/atun/${u#atun-}.json" "$f" ||
      { grep -n "ExecStart" "$f" >&2; fail "$f does not start $prefix/bin/$u"; }
    if [ "$prefix" != /usr/local ]; then
      ! grep -q "/usr/local" "$f" || fail "$f still names /usr/local"
    fi
    sed "s#/usr/local/#$prefix/#g" "$SRC/dist/systemd/$u.service" | cmp -s - "$f" ||
      fail "$f differs from dist/systemd/$u.service beyond the prefix"
    for doc in $(sed -n 's/^Documentation=file://p' "$f"); do
      [ -f "$root$doc" ] || fail "$u: Documentation=$doc is not installed"
    done
  done
}
check_units "" "$P"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$P/lib/systemd/system/atun-gateway.service" \
    "$P/lib/systemd/system/atun-agent.service" >"$WORK/verify.out" 2>&1 && [ ! -s "$WORK/verify.out" ] ||
    { cat "$WORK/verify.out"; fail "systemd-analyze verify on the installed units"; }
  ok "installed units start the installed binaries and pass systemd-analyze verify"
else
  fail "systemd-analyze missing (Debian package systemd, installed by ci/deps.sh)"
fi

# --- DESTDIR staging, as a package build does --------------------------------------------------
S="$WORK/stage"
DESTDIR="$S" cmake --install "$BUILD" --prefix /usr >"$WORK/install.out" 2>&1 ||
  { cat "$WORK/install.out"; fail "cmake --install with DESTDIR failed"; }
found=$(cd "$S" && find . -type f | sed 's#^\./##' | sort)
[ "$found" = "$(printf 'usr/%s\n' "${PROGRAMS[@]}" "${DATA[@]}" | sort)" ] ||
  fail "DESTDIR install put files elsewhere: $found"
check_units "$S" /usr
ok "DESTDIR=... --prefix /usr stages everything under DESTDIR, units naming /usr/bin"
