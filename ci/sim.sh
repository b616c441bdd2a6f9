#!/usr/bin/env bash
# Long simulator batches: every scenario over a range of seeds, each seed run
# twice to catch nondeterminism.  Defaults to random seeds; set SIM_SEED_BASE
# to replay a batch.  SIM_SEEDS seeds per scenario (default 50).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
n="${SIM_SEEDS:-50}"
base="${SIM_SEED_BASE:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
bash "$root/ci/deps.sh"
bash "$root/ci/build.sh" release
sim="$root/build/release/atun-sim"
echo "seed base $base, $n seeds per scenario"
fail=0
for scenario in mixed gateway_restart partition route_epochs failover token_race revocation lossy_transfer; do
  if ! "$sim" --seeds "$base-$((base + n - 1))" --scenario "$scenario" --twice \
        > "$root/build/release/sim-$scenario.log" 2>&1; then
    fail=1
    grep -E 'result: FAIL|violation|reproduce|nondeterminism' "$root/build/release/sim-$scenario.log" | head -n 20
  fi
  echo "$scenario: $(tail -n1 "$root/build/release/sim-$scenario.log")"
done
"$sim" --seed "$base" --scenario storm --agents 1000 --duration 3600 | grep -E 'result|speed|sessions'
exit "$fail"
