#!/usr/bin/env bash
# Runs on the device machine (see gpu-prepare.sh; carry target/gpu): runtime and NCCL
# variants of a few benchmark plans, each as a graph run whose efficiency is measured at
# the same clocks (`--compute-alone 10`: 10 replays of the step without p2p, then 10 of the
# whole step; ideal = the busiest rank's median of the first, step = the median of the
# second). SWEEP_PLANS: plan names under target/gpu/bench;
# SWEEP_VARIANTS: NAME:SETTING words, SETTING empty (the default), or comma-separated `run`
# flags (--flag or --flag=value) and environment variables (NAME=VALUE), e.g.
# `copy2:--p2p=copy,--comm-sms=2`. Results in $OUT/sweep.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
LOGS=$(mktemp -d); trap 'tar czf "$OUT/sweep-logs.tgz" -C "$LOGS" .' EXIT
source scripts/gpu-common.sh
PLANS=${SWEEP_PLANS:-dualpipe-r2-h2048 dualpipev-r2-h2048}
VARIANTS=${SWEEP_VARIANTS:-default: high-priority:--comm-high-priority nccl-simple:NCCL_PROTO=Simple default-again:}
for plan in $PLANS; do
  dir=target/gpu/bench/$plan; fits "$dir" "$OUT/sweep.txt" || continue; ranks=$(ranks_of "$dir")
  for v in $VARIANTS; do
    name=${v%%:*}; setting=${v#*:}; envs=(); flags=()
    IFS=, read -ra words <<< "$setting"
    for w in "${words[@]}"; do
      case "$w" in --*) flags+=("$w") ;; *=*) envs+=("$w") ;; esac
    done
    log="$LOGS/$plan-$name.log"
    env "${envs[@]}" timeout 200 "$RT" launch --gpus "$ranks" "$dir" --steps 15 --compute-alone 10 "${flags[@]}" > "$log" 2>&1
    python3 scripts/step-efficiency.py "$plan" "$name" "$log" | tee -a "$OUT/sweep.txt"
  done
done
