#!/usr/bin/env bash
# Configures and builds one build type into build/<type>.
# usage: ci/build.sh [debug|release|coverage|fuzz] [extra cmake args...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kind="${1:-debug}"; shift || true
args=(-DATUN_WERROR="${ATUN_WERROR:-ON}")
case "$kind" in
  debug)    args+=(-DCMAKE_BUILD_TYPE=Debug) ;;
  release)  args+=(-DCMAKE_BUILD_TYPE=Release -DATUN_TESTS=OFF) ;;
  coverage) args+=(-DCMAKE_BUILD_TYPE=Coverage) ;;
  fuzz)     args+=(-DCMAKE_BUILD_TYPE=Debug -DATUN_FUZZ=ON -DCMAKE_C_COMPILER=clang) ;;
  *) echo "usage: $0 [debug|release|coverage|fuzz]" >&2; exit 2 ;;
esac
dir="$root/build/$kind"
cmake -S "$root" -B "$dir" "${args[@]}" "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
