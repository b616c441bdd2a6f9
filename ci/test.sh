#!/usr/bin/env bash
# The test command: installs and builds what it needs, then runs every test
# (Criterion unit tests, fuzz corpus replays, the core purity check) in the
# sanitizer build.  Works on a fresh Debian 12 machine as root.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/ci/deps.sh"
bash "$root/ci/build.sh" debug
cd "$root/build/debug"
log="$root/build/debug/ctest-output.log"
# Criterion prints a "Synthesis" line per test binary; show them, then let
# ctest's own summary close the run.
status=0
ctest --output-on-failure -j"$(nproc)" --timeout 900 -V >"$log" 2>&1 || status=$?
grep -E 'Synthesis:|replayed [0-9]+ inputs|core purity:' "$log" | sed -E 's/^[0-9]+: //' || true
if [ "$status" -ne 0 ]; then
  echo "--- failures ---"
  grep -E -B2 -A40 '\[FAIL\]|\[----\]|ERROR: AddressSanitizer|runtime error:|Failed|\*\*\*Exception' "$log" | head -n 400 || true
fi
sed -n '/tests passed\|tests failed/,$p' "$log"
exit "$status"
