#!/usr/bin/env bash
# Builds what a GPU call needs, here (the device machine has no Rust and no network):
# the runtime binary and the plans to run, under target/gpu/. Then run, with the device
# tool (kind nvidia-h200-x2), carrying target/gpu:  bash scripts/gpu-run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p pipewright-runtime -p pipewright
rm -rf target/gpu && mkdir -p target/gpu/plans
cp target/release/pipewright-runtime target/gpu/
# The correctness plans: (family, ranks, microbatches).
for case in "dualpipev 1 4" "1f1b 2 4" "zb-h1 2 4" "dualpipe 2 4" "dualpipev 2 6" "interleaved-1f1b 2 4"; do
  set -- $case
  name="$1-r$2"
  sed "s/^schedule = .*/schedule = \"$1\"/; s/^ranks = .*/ranks = $2/; s/^microbatches = .*/microbatches = $3/" \
    specs/mlp-1f1b.toml > "target/gpu/plans/$name.toml"
  ./target/release/pipewright compile "target/gpu/plans/$name.toml" -o "target/gpu/plans/$name" >/dev/null
done
# Timing plans (no reference: the CPU would take too long): issue 4's first setting.
mkdir -p target/gpu/bench
for case in "dualpipev 2 20" "dualpipe 2 20" "1f1b 2 20"; do
  set -- $case
  name="$1-r$2-h512"
  sed "s/^schedule = .*/schedule = \"$1\"/; s/^ranks = .*/ranks = $2/; s/^microbatches = .*/microbatches = $3/;
       s/^hidden = .*/hidden = 512/; s/^ffn = .*/ffn = 2048/; s/^seq = .*/seq = 256/; s/^microbatch_size = .*/microbatch_size = 3/;
       s/^layers_per_stage = .*/layers_per_stage = 1/" specs/mlp-1f1b.toml > "target/gpu/bench/$name.toml"
  ./target/release/pipewright compile "target/gpu/bench/$name.toml" -o "target/gpu/bench/$name" >/dev/null
done
# Optimised plans (issue 6) against their families, same model: the correctness plans
# (small) and the timing plans (hidden 512, 8 microbatches, blocking p2p).
for fam in zb-h1 interleaved-1f1b zb-v; do
  name="$fam-r2-opt"
  sed "s/^schedule = .*/schedule = \"$fam\"/; s/^ranks = .*/ranks = 2/" specs/mlp-1f1b.toml > "target/gpu/plans/$name.toml"
  ./target/release/pipewright compile "target/gpu/plans/$name.toml" -o "target/gpu/plans/$name" --optimize >/dev/null
  for opt in "" "--optimize"; do
    tag="$fam-r2-h512${opt:+-opt}"
    sed "s/^schedule = .*/schedule = \"$fam\"/; s/^ranks = .*/ranks = 2/; s/^microbatches = .*/microbatches = 8/;
         s/^hidden = .*/hidden = 512/; s/^ffn = .*/ffn = 2048/; s/^seq = .*/seq = 256/; s/^microbatch_size = .*/microbatch_size = 3/;
         s/^layers_per_stage = .*/layers_per_stage = 1/" specs/mlp-1f1b.toml > "target/gpu/bench/$tag.toml"
    ./target/release/pipewright compile "target/gpu/bench/$tag.toml" -o "target/gpu/bench/$tag" $opt --json \
      | python3 -c "import json,sys; r=json.load(sys.stdin); print('$tag simulated makespan', r['makespan'])" \
      | tee -a target/gpu/bench/simulated.txt
  done
done
ls target/gpu/plans target/gpu/bench
