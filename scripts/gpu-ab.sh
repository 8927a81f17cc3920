#!/usr/bin/env bash
# Runs on the device machine (see gpu-prepare.sh; carry target/gpu): two runtime binaries
# against each other on the same plans — e.g. this commit's and an earlier one's, built
# here with `git worktree add /tmp/old REV && (cd /tmp/old && cargo build --release -p
# pipewright-runtime)` and copied to target/gpu/old-runtime. Alternating A, B, A, B per
# plan, each binary with a kernel and tuning cache of its own (they would otherwise share
# the algorithms the first published), each run a graph run with its efficiency measured at
# the same clocks (as gpu-sweep.sh). AB_PLANS: plan names under target/gpu/bench;
# AB_A, AB_B: the binaries (default target/gpu/old-runtime and target/gpu/pipewright-runtime);
# AB_A_ARGS, AB_B_ARGS: options of each side's runs (e.g. one binary twice, AB_B_ARGS="--p2p
# copy"); AB_A_DIR, AB_B_DIR: where each side's plans are (default target/gpu/bench: two
# emitters' plans of the same spec against each other, e.g. AB_B_DIR=target/gpu/new with
# the same binary twice); AB_ROUNDS (default 2). Results in $OUT/ab.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
LOGS=$(mktemp -d); trap 'tar czf "$OUT/ab-logs.tgz" -C "$LOGS" .' EXIT
source scripts/gpu-common.sh
A=${AB_A:-target/gpu/old-runtime} B=${AB_B:-target/gpu/pipewright-runtime}
CACHES=$(mktemp -d)
for plan in ${AB_PLANS:-dualpipe-r2-h4096 dualpipev-r2-h2048}; do
  dir=${AB_A_DIR:-target/gpu/bench}/$plan; fits "$dir" "$OUT/ab.txt" || continue; ranks=$(ranks_of "$dir")
  for round in $(seq "${AB_ROUNDS:-2}"); do
    for side in A B; do
      bin=$A args=${AB_A_ARGS:-} dir=${AB_A_DIR:-target/gpu/bench}/$plan
      [ "$side" = B ] && bin=$B args=${AB_B_ARGS:-} dir=${AB_B_DIR:-target/gpu/bench}/$plan
      log="$LOGS/$plan-$side-$round.log"
      PIPEWRIGHT_CACHE_DIR="$CACHES/$side" timeout 200 "$bin" launch --gpus "$ranks" "$dir" --steps 15 --compute-alone 10 $args > "$log" 2>&1
      python3 scripts/step-efficiency.py "$plan" "$side ($bin $args $dir) round $round" "$log" | tee -a "$OUT/ab.txt"
    done
  done
done
