#!/usr/bin/env bash
# The main job: sets everything up on a fresh Debian 12 machine, builds atun
# and runs its demo.  Until the daemons are complete the demo is the
# simulator: a gateway and eight agents on real QUIC + TLS over a simulated
# network that loses, reorders and partitions, with a gateway crash in the
# middle; then the network heals and everything must converge.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/ci/deps.sh"
bash "$root/ci/build.sh" release
seed="${ATUN_DEMO_SEED:-2026}"
echo "== atun-sim: seed $seed, scenario gateway_restart, 8 agents, 120 simulated seconds"
"$root/build/release/atun-sim" --seed "$seed" --scenario gateway_restart --agents 8 --duration 120
echo "== atun-sim: seed $seed, every fault kind the seed switches on"
"$root/build/release/atun-sim" --seed "$seed" --scenario mixed --duration 180 --twice
