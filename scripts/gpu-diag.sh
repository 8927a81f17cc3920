#!/usr/bin/env bash
# Runs on the device machine (see gpu-prepare.sh; carry target/gpu): where a step's time
# goes. For each benchmark setting, the rate of every product the model runs (cuBLASLt,
# random data: forward, input-gradient and weight-gradient forms, with and without the
# GELU epilogues); for each plan named in DIAG_PLANS (default: the 1-GPU dualpipev plans),
# a profile with node timings (nodes.md: time per kind of node and the rate it reached)
# and graph replays (the graph's node census and the host launch time), also with
# `--keep-memsets` (cuBLASLt's memset nodes as captured: same losses? slower launch?),
# with NCCL's graph-mixing support on (its event nodes back) and with
# `--comm-high-priority` (DIAG_VARIANTS picks among these); and which transport NCCL
# picks between two GPUs. Results in $OUT/diag.txt, $OUT/nodes-*.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
LOGS=$(mktemp -d); trap 'tar czf "$OUT/diag-logs.tgz" -C "$LOGS" .' EXIT
source scripts/gpu-common.sh

# DIAG_PRODUCTS=0 skips the products' rates (measured once per machine, they take minutes);
# DIAG_SETTINGS picks the settings (dtype,tokens,hidden,ffn words).
[ "${DIAG_PRODUCTS:-1}" = 0 ] || echo "== products of each setting (dtype tokens hidden ffn), random data" | tee -a "$OUT/diag.txt"
# A product with a GELU epilogue twice: as the runtime runs it (fused, or the plain product
# and the kernel where that raced faster) and with --always-fuse.
[ "${DIAG_PRODUCTS:-1}" = 0 ] || for setting in ${DIAG_SETTINGS:-bf16,4096,4096,16384 bf16,4096,2048,8192 f32,768,512,2048}; do
  set -- ${setting//,/ }
  dt=$1 t=$2 h=$3 f=$4
  for args in "--m $t --n $f --k $h" "--m $t --n $f --k $h --epilogue gelu" \
              "--m $t --n $f --k $h --epilogue gelu --always-fuse" "--m $t --n $h --k $f" \
              "--m $t --n $f --k $h --trans-b" "--m $t --n $f --k $h --trans-b --epilogue gelu-grad" \
              "--m $t --n $f --k $h --trans-b --epilogue gelu-grad --always-fuse" \
              "--m $t --n $h --k $f --trans-b" "--m $f --n $h --k $t --trans-a --accumulate" \
              "--m $h --n $f --k $t --trans-a --accumulate"; do
    tag=""; [[ "$args" == *--always-fuse* ]] && tag="[--always-fuse] "
    "$RT" gemm-rate --dtype "$dt" $args --iters 20 2>&1 | sed "s/^/$tag/" | tee -a "$OUT/diag.txt"
  done
done

for plan in ${DIAG_PLANS:-target/gpu/bench/dualpipev-r1-h512 target/gpu/bench/dualpipev-r1-h2048 target/gpu/bench/dualpipev-r1-h4096}; do
  fits "$plan" "$OUT/diag.txt" || continue
  name=$(basename "$plan"); ranks=$(ranks_of "$plan")
  echo "== $name" | tee -a "$OUT/diag.txt"
  timeout 200 "$RT" profile --gpus "$ranks" "$plan" --steps 5 -o "$LOGS/profile-$name" > "$LOGS/$name-profile.log" 2>&1
  grep -E "ideal|error|note" "$LOGS/$name-profile.log" | tee -a "$OUT/diag.txt"
  cp "$LOGS/profile-$name/nodes.md" "$OUT/nodes-$name.md" 2>/dev/null
  head -14 "$LOGS/profile-$name/nodes.md" 2>/dev/null | tee -a "$OUT/diag.txt"
  timeout 200 "$RT" launch --gpus "$ranks" "$plan" --steps 15 > "$LOGS/$name-graph.log" 2>&1
  grep -E "graph of|median|error|note" "$LOGS/$name-graph.log" | tee -a "$OUT/diag.txt"
  # What the two launch-time measures buy (runtime/src/graph.rs, runtime/src/main.rs),
  # and the communication stream's priority (runtime/src/gpu/mod.rs): step and launch
  # time, and the same losses (step 1 on is a replay).
  for variant in ${DIAG_VARIANTS:-keep-memsets graph-mixing comm-high-priority}; do
    case "$variant" in
      graph-mixing) NCCL_GRAPH_MIXING_SUPPORT=1 timeout 200 "$RT" launch --gpus "$ranks" "$plan" --steps 15 > "$LOGS/$name-$variant.log" 2>&1 ;;
      *) timeout 200 "$RT" launch --gpus "$ranks" "$plan" --steps 15 "--$variant" > "$LOGS/$name-$variant.log" 2>&1 ;;
    esac
    grep -E "graph of|median|error|note" "$LOGS/$name-$variant.log" | sed "s/^/$variant: /" | tee -a "$OUT/diag.txt"
    same=$(diff <(grep -E "step [1-9][0-9]*:" "$LOGS/$name-graph.log" | sed 's/: [0-9.]* ms//' | sort) \
                <(grep -E "step [1-9][0-9]*:" "$LOGS/$name-$variant.log" | sed 's/: [0-9.]* ms//' | sort) > /dev/null && echo equal || echo DIFFER)
    echo "$variant: losses of the replayed steps $same to the default graph's" | tee -a "$OUT/diag.txt"
  done
done

if [ "$GPUS" -ge 2 ]; then
  echo "== NCCL transport between two GPUs" | tee -a "$OUT/diag.txt"
  NCCL_DEBUG=INFO timeout 120 "$RT" launch --gpus 2 target/gpu/plans/1f1b-r2-f32 --steps 2 > "$LOGS/nccl.log" 2>&1
  grep -E "via|NCCL version|Channel 00|P2P|SHM|NVLS" "$LOGS/nccl.log" | sort | uniq -c | head -20 | tee -a "$OUT/diag.txt"
fi
