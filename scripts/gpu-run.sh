#!/usr/bin/env bash
# Runs on the device machine (see gpu-prepare.sh): every plan under target/gpu/plans for one
# step against the CPU reference, logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
RT=target/gpu/pipewright-runtime
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
for plan in target/gpu/plans/*/; do
  name=$(basename "$plan")
  ranks=$(python3 -c "import json;print(json.load(open('$plan/plan.json'))['world_size'])")
  echo "== $name ($ranks GPUs)" | tee -a "$OUT/summary.txt"
  # Four steps: the first eager, the rest replays of the captured graph; SGD updates in
  # between, all compared with the CPU executor of the same plan.
  timeout 120 "$RT" launch --gpus "$ranks" "$plan" --steps 4 --reference > "$OUT/$name.log" 2>&1
  echo "exit $?" >> "$OUT/$name.log"
  grep -E "reference|error|exit" "$OUT/$name.log" | tee -a "$OUT/summary.txt"
done
# PyTorch cross-check (float64 autograd) of the runtime's first step.
for name in 1f1b-r2 dualpipe-r2 dualpipev-r1; do
  plan=target/gpu/plans/$name
  ranks=$(python3 -c "import json;print(json.load(open('$plan/plan.json'))['world_size'])")
  timeout 120 "$RT" launch --gpus "$ranks" "$plan" --steps 1 --dump "$OUT/dump-$name" > /dev/null 2>&1
  python3 tests/torch_reference.py "$OUT/dump-$name" 2>&1 | sed "s/^/$name: /" | tee -a "$OUT/summary.txt"
done
rm -rf "$OUT"/dump-*
# Checkpoint, kill, resume: the resumed steps' losses equal an uninterrupted run's, bitwise.
plan=target/gpu/plans/1f1b-r2
timeout 120 "$RT" launch --gpus 2 "$plan" --steps 4 --checkpoint-dir /tmp/ckA --dump /tmp/dA > "$OUT/ckpt.log" 2>&1
timeout 120 "$RT" launch --gpus 2 "$plan" --steps 2 --checkpoint-dir /tmp/ckB >> "$OUT/ckpt.log" 2>&1
timeout 120 "$RT" launch --gpus 2 "$plan" --steps 4 --checkpoint-dir /tmp/ckB --resume --dump /tmp/dB >> "$OUT/ckpt.log" 2>&1
python3 - <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import json
a = json.load(open("/tmp/dA/rank1-losses.json"))["losses"]
b = json.load(open("/tmp/dB/rank1-losses.json"))
assert b["first_step"] == 2, b
same = a[2:4] == b["losses"]
print(f"checkpoint/resume: steps 2-3 losses {'bitwise equal' if same else 'DIFFER'}: {a[2:4]} vs {b['losses']}")
PY
# The same without graphs, for one plan.
timeout 120 "$RT" launch --gpus 2 target/gpu/plans/dualpipe-r2/ --steps 4 --reference --eager > "$OUT/dualpipe-r2-eager.log" 2>&1
grep -E "reference|error" "$OUT/dualpipe-r2-eager.log" | sed 's/^/eager: /' | tee -a "$OUT/summary.txt"
# Timing: 30 steps, graph replay and eager.
for plan in target/gpu/bench/*/; do
  name=$(basename "$plan")
  for mode in graph eager; do
    flag=""; [ "$mode" = eager ] && flag="--eager"
    timeout 200 "$RT" launch --gpus 2 "$plan" --steps 30 $flag > "$OUT/bench-$name-$mode.log" 2>&1
    grep -E "median|error" "$OUT/bench-$name-$mode.log" | sed "s/^/$name: /" | tee -a "$OUT/summary.txt"
  done
done
# A refused plan: the wrong world size.
WORLD_SIZE=3 RANK=0 "$RT" check target/gpu/plans/1f1b-r2/ 2>&1 | tee -a "$OUT/summary.txt"; echo "exit $?" | tee -a "$OUT/summary.txt"
