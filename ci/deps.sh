#!/usr/bin/env bash
# Installs what atun needs on Debian 12 and builds wolfSSL (with QUIC) and
# ngtcp2's wolfSSL crypto helper from Debian's own source packages into a
# cached prefix.  Safe to run again: every step checks before it acts, and the
# source build is skipped when the prefix stamp matches the Debian versions,
# the flags and this script's recipe.
#
# Environment:
#   ATUN_DEPS_PREFIX  where the built libraries go (default ~/.cache/atun/deps)
#   ATUN_DEPS_NO_APT  set to 1 to skip the Debian package step
set -euo pipefail

PREFIX="${ATUN_DEPS_PREFIX:-${HOME:-/root}/.cache/atun/deps}"
WORK="${PREFIX}.work"
RECIPE=4   # bump when the build steps below change

PACKAGES=(
  build-essential cmake pkg-config git ca-certificates curl python3 procps systemd iproute2
  clang llvm libclang-rt-14-dev
  libev-dev libcjson-dev libcriterion-dev lcov
  libsqlite3-dev libhttp-parser-dev libc-ares-dev
  dpkg-dev autoconf automake libtool
)

WOLFSSL_FLAGS="--enable-quic --enable-certgen --enable-certreq --enable-certext \
--enable-keygen --enable-ecc --enable-ed25519 --enable-curve25519 --enable-aesgcm \
--enable-chacha --enable-poly1305 --enable-session-ticket --enable-alpn --enable-sni \
--enable-opensslextra --enable-tls13 --enable-aesni --enable-intelasm --enable-sp --enable-sp-asm \
--disable-examples --disable-crypttests --disable-benchmark --enable-static --disable-shared \
--with-pic"
WOLFSSL_CFLAGS="-O2 -fPIC -DWOLFSSL_ALT_NAMES -DWOLFSSL_PUBLIC_MP"

log() { printf 'deps: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then echo sudo; else
      log "installing Debian packages needs root"; exit 1; fi
  fi
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "Debian packages present"
    return
  fi
  local SUDO; SUDO="$(need_root)"
  log "installing: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# A private apt configuration that holds deb-src twins of the machine's own
# entries, so the system's lists and sources stay untouched and no mirror is
# named here.
setup_src_apt() {
  local dir="$WORK/apt"
  mkdir -p "$dir/sources.list.d" "$dir/lists/partial"
  rm -f "$dir/sources.list.d/"*
  local f n=0
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    sed -E 's/^Types:.*/Types: deb-src/' "$f" > "$dir/sources.list.d/src$n.sources"
    n=$((n + 1))
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -e "$f" ] || continue
    sed -nE 's/^[[:space:]]*deb[[:space:]]+/deb-src /p' "$f" > "$dir/sources.list.d/src$n.list"
    n=$((n + 1))
  done
  APT_OPTS=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$dir/sources.list.d"
            -o "Dir::State::Lists=$dir/lists")
}

src_version() {
  # Candidate source version of package $1 in the private lists.
  apt-cache "${APT_OPTS[@]}" showsrc "$1" 2>/dev/null \
    | awk '/^Version:/ {print $2}' | sort -V | tail -n1
}

build_wolfssl() {
  local src="$1"
  log "building wolfSSL in $src"
  (cd "$src" && ./autogen.sh >/dev/null 2>&1 || true)
  (cd "$src" && CFLAGS="$WOLFSSL_CFLAGS" ./configure --prefix="$PREFIX" $WOLFSSL_FLAGS >"$WORK/wolfssl-configure.log" 2>&1) \
    || { tail -n 40 "$WORK/wolfssl-configure.log"; exit 1; }
  make -C "$src" -j"$(nproc)" >"$WORK/wolfssl-build.log" 2>&1 || { tail -n 40 "$WORK/wolfssl-build.log"; exit 1; }
  make -C "$src" install >>"$WORK/wolfssl-build.log" 2>&1
  # configure detects __uint128_t but leaves it out of options.h, so code
  # built against the installed headers would see smaller big-number
  # structs (ecc_key, RsaKey) than the library uses.  Put it back.
  if grep -q '^#define HAVE___UINT128_T 1' "$src/config.h" 2>/dev/null \
     && ! grep -q 'HAVE___UINT128_T' "$PREFIX/include/wolfssl/options.h"; then
    sed -i 's|^#ifdef __cplusplus$|#ifndef HAVE___UINT128_T\n#define HAVE___UINT128_T 1\n#endif\n\n&|' \
      "$PREFIX/include/wolfssl/options.h"
    grep -q 'HAVE___UINT128_T' "$PREFIX/include/wolfssl/options.h" \
      || { log "could not add HAVE___UINT128_T to options.h"; exit 1; }
  fi
}

build_ngtcp2() {
  local src="$1" b="$WORK/ngtcp2-build"
  log "building ngtcp2 in $src"
  rm -rf "$b"
  cmake -S "$src" -B "$b" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
    -DENABLE_WOLFSSL=ON -DENABLE_OPENSSL=OFF -DENABLE_GNUTLS=OFF -DENABLE_BORINGSSL=OFF \
    -DENABLE_PICOTLS=OFF -DENABLE_JEMALLOC=OFF -DENABLE_STATIC_LIB=ON -DENABLE_SHARED_LIB=OFF \
    -DWOLFSSL_INCLUDE_DIR="$PREFIX/include" -DWOLFSSL_LIBRARY="$PREFIX/lib/libwolfssl.a" \
    >"$WORK/ngtcp2-configure.log" 2>&1 || { tail -n 40 "$WORK/ngtcp2-configure.log"; exit 1; }
  cmake --build "$b" -j"$(nproc)" --target ngtcp2_static ngtcp2_crypto_wolfssl_static \
    >"$WORK/ngtcp2-build.log" 2>&1 || { tail -n 40 "$WORK/ngtcp2-build.log"; exit 1; }
  mkdir -p "$PREFIX/include/ngtcp2" "$PREFIX/lib"
  cp "$src"/lib/includes/ngtcp2/*.h "$b"/lib/includes/ngtcp2/version.h "$PREFIX/include/ngtcp2/"
  cp "$src"/crypto/includes/ngtcp2/*.h "$PREFIX/include/ngtcp2/"
  cp "$b"/lib/libngtcp2_static.a "$PREFIX/lib/libngtcp2.a"
  cp "$b"/crypto/wolfssl/libngtcp2_crypto_wolfssl_static.a "$PREFIX/lib/libngtcp2_crypto_wolfssl.a"
}

main() {
  [ "${ATUN_DEPS_NO_APT:-0}" = 1 ] || install_packages
  mkdir -p "$WORK"
  setup_src_apt
  local stamp_file="$PREFIX/.atun-stamp"
  # Fast path: the stamp records versions seen at build time.  Refresh the
  # source lists at most once a day so a new security upload is noticed.
  local lists_age=999999
  if [ -n "$(ls "$WORK/apt/lists" 2>/dev/null | grep -v partial || true)" ]; then
    lists_age=$(( $(date +%s) - $(stat -c %Y "$WORK/apt/lists" ) ))
  fi
  if [ "$lists_age" -gt 86400 ]; then
    log "refreshing private deb-src lists"
    apt-get "${APT_OPTS[@]}" update -q >"$WORK/apt-update.log" 2>&1 \
      || { tail -n 20 "$WORK/apt-update.log"; exit 1; }
    touch "$WORK/apt/lists"
  fi
  local wv nv
  wv="$(src_version wolfssl)"; nv="$(src_version ngtcp2)"
  [ -n "$wv" ] && [ -n "$nv" ] || { log "no deb-src for wolfssl/ngtcp2"; exit 1; }
  case "$nv" in 0.12.1*) ;; *) log "expected ngtcp2 0.12.1, Debian offers $nv"; exit 1 ;; esac
  local want="recipe=$RECIPE wolfssl=$wv ngtcp2=$nv flags=$(printf '%s %s' "$WOLFSSL_FLAGS" "$WOLFSSL_CFLAGS" | sha256sum | cut -c1-16)"
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want" ] \
     && [ -f "$PREFIX/lib/libwolfssl.a" ] && [ -f "$PREFIX/lib/libngtcp2_crypto_wolfssl.a" ]; then
    log "cached prefix up to date: $PREFIX ($want)"
    return
  fi
  log "building ($want)"
  # Build into a scratch prefix and swap it in at the end, so builds using
  # the old prefix keep working until the new one is complete.
  local final="$PREFIX"
  PREFIX="$final.tmp"
  rm -rf "$PREFIX" "$WORK/src"
  mkdir -p "$PREFIX" "$WORK/src"
  (cd "$WORK/src" && apt-get "${APT_OPTS[@]}" source -q "wolfssl=$wv" "ngtcp2=$nv" >"$WORK/apt-source.log" 2>&1) \
    || { tail -n 20 "$WORK/apt-source.log"; exit 1; }
  build_wolfssl "$(find "$WORK/src" -maxdepth 1 -type d -name 'wolfssl-*' | head -n1)"
  build_ngtcp2 "$(find "$WORK/src" -maxdepth 1 -type d -name 'ngtcp2-*' | head -n1)"
  echo "$want" > "$PREFIX/.atun-stamp"
  rm -rf "$final.old"
  [ -d "$final" ] && mv "$final" "$final.old"
  mv "$PREFIX" "$final"
  rm -rf "$final.old" "$WORK/src" "$WORK/ngtcp2-build"
  PREFIX="$final"
  log "done: $PREFIX"
}

main "$@"
