#!/usr/bin/env bash
# The main job: sets everything up on a fresh Debian 12 machine, builds atun
# and runs its demo.  Until the daemons exist the demo is the simulator's
# in-memory run of an agent and a gateway speaking the wire protocol.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/ci/deps.sh"
bash "$root/ci/build.sh" release
if [ -x "$root/build/release/atun-sim" ]; then
  exec "$root/build/release/atun-sim" --seed "${ATUN_DEMO_SEED:-1}" --verbose
fi
echo "atun-sim is not built yet; running the test suite instead"
exec bash "$root/ci/test.sh"
