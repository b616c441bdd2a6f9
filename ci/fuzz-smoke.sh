#!/usr/bin/env bash
# Runs every libFuzzer harness for a bounded time over a scratch copy of its
# seed corpus.  FUZZ_SECONDS per harness (default 30).  New crashes land in
# build/fuzz/findings/<target>/ and fail the script.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${FUZZ_SECONDS:-30}"
bash "$root/ci/deps.sh"
bash "$root/ci/build.sh" fuzz
dir="$root/build/fuzz"
fail=0
for bin in "$dir"/fuzz_*; do
  [ -x "$bin" ] || continue
  target="$(basename "$bin")"; target="${target#fuzz_}"
  work="$dir/corpus-run/$target"; findings="$dir/findings/$target"
  mkdir -p "$work" "$findings"
  cp -n "$root/fuzz/corpus/$target/"* "$work/" 2>/dev/null || true
  echo "== fuzz $target for ${secs}s"
  if ! "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$findings/" "$work" >"$dir/$target.log" 2>&1; then
    echo "FINDING in $target: see $dir/$target.log and $findings/"; fail=1
  fi
  grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb' "$dir/$target.log" | tr '\n' ' '
  echo " corpus=$(ls "$work" | wc -l)"
done
exit "$fail"
