#!/usr/bin/env bash
# Line coverage of the test suite: lcov HTML in build/coverage/html and a
# summary line for core/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/ci/deps.sh"
bash "$root/ci/build.sh" coverage
dir="$root/build/coverage"
lcov --quiet --zerocounters --directory "$dir"
(cd "$dir" && ctest -j"$(nproc)" --timeout 900 --output-on-failure >/dev/null)
lcov --quiet --capture --directory "$dir" --output-file "$dir/all.info" 2>/dev/null
lcov --quiet --extract "$dir/all.info" "$root/core/*" --output-file "$dir/core.info"
genhtml --quiet "$dir/core.info" --output-directory "$dir/html"
echo "coverage report: $dir/html/index.html"
lcov --list "$dir/core.info"
printf 'core/ line coverage: '
lcov --summary "$dir/core.info" 2>&1 | awk '/lines/ {print $2, $3, $4, $5, $6}'
