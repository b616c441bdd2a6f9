#!/usr/bin/env bash
# One fixed seed of every simulator scenario (ctest runs this).
set -euo pipefail
sim="${1:?usage: $0 path/to/atun-sim}"
fail=0
for scenario in mixed gateway_restart partition route_epochs failover token_race revocation lossy_transfer; do
  out="$("$sim" --seed 7 --scenario "$scenario" --duration 150 2>&1)" || { fail=1; echo "$out"; }
  echo "$out" | grep -E '^result' | sed "s/^/$scenario: /"
done
exit "$fail"
