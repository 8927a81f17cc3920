#!/usr/bin/env bash
# Builds what a GPU call needs, here (the device machine has no Rust, no Z3 and no network):
# the runtime binary and the plans to run, under target/gpu/. Then run, with the device
# tool (kind nvidia-h200-x4), carrying target/gpu:  bash scripts/gpu-run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p pipewright-runtime -p pipewright
rm -rf target/gpu && mkdir -p target/gpu/plans target/gpu/bench
cp target/release/pipewright-runtime target/gpu/

# spec OUT.toml schedule ranks microbatches [key=value ...]: specs/mlp-1f1b.toml with
# those settings (keys of [model]/[training]: hidden, ffn, seq, microbatch_size, dtype, ...).
spec() {
  local out=$1 schedule=$2 ranks=$3 mbs=$4; shift 4
  local script="s/^schedule = .*/schedule = \"$schedule\"/; s/^ranks = .*/ranks = $ranks/; s/^microbatches = .*/microbatches = $mbs/;"
  for kv in "$@"; do
    local k=${kv%%=*} v=${kv#*=}
    script="$script s/^$k = .*/$k = $v/;"
  done
  sed "$script" specs/mlp-1f1b.toml > "$out"
}

# Correctness: (family, ranks, microbatches, dtype); each runs against the CPU reference.
for case in "dualpipev 1 4 f32" "1f1b 2 4 f32" "zb-h1 2 4 f32" "dualpipe 2 4 f32" "dualpipev 2 6 f32" \
            "interleaved-1f1b 2 4 f32" "1f1b 4 8 f32" "zb-h1 4 8 f32" "dualpipe 4 8 f32" "dualpipev 4 8 f32" \
            "dualpipev 1 4 bf16" "1f1b 2 4 bf16" "zb-h1 4 8 bf16" "dualpipe 4 8 bf16" "dualpipev 4 8 bf16" \
            "zb-v 2 4 f32 async" "1f1b 2 4 f32 async" "dualpipe 2 4 f32 async" \
            "dualpipev 1 4 f32 blocking fused" "1f1b 2 4 bf16 blocking kernel" "dualpipe 2 4 bf16 async auto bf16"; do
  set -- $case
  comm=${5:-blocking} gelu=${6:-auto} mirror=${7:-f32}
  name="$1-r$2-$4${5:+-$5}${6:+-$6}${7:+-mirror-$7}"
  spec "target/gpu/plans/$name.toml" "$1" "$2" "$3" "dtype=\"$4\"" "comm=\"$comm\"" "gelu=\"$gelu\"" \
    "mirror_sum=\"$mirror\""
  ./target/release/pipewright compile "target/gpu/plans/$name.toml" -o "target/gpu/plans/$name" >/dev/null
done

# Benchmarks (issue 4): dualpipev and dualpipe at three settings, on 4 GPUs (the issue's
# setting), on 2 (what runs when only 2 are lent) and dualpipev on 1 (no NCCL: a baseline
# for the host launch time); gpu-run.sh runs those that fit.
for setting in "h512 512 256 3 20 f32" "h2048 2048 2048 2 16 bf16" "h4096 4096 4096 1 16 bf16"; do
  set -- $setting
  tag=$1 hidden=$2 seq=$3 mbsize=$4 mbs=$5 dtype=$6
  for ranks in 4 2 1; do
    for fam in dualpipev dualpipe; do
      [ "$ranks" = 1 ] && [ "$fam" = dualpipe ] && continue   # dualpipe needs an even rank count
      # The plan as benchmarked (GELU fused in bf16, async p2p), and two variants to compare
      # with: GELU as kernels of its own, and blocking p2p.
      for variant in "" "-kernel" "-blocking"; do
        [ "$ranks" = 1 ] && [ -n "$variant" ] && continue
        gelu=auto comm=async
        [ "$variant" = -kernel ] && gelu=kernel
        [ "$variant" = -blocking ] && comm=blocking
        name="$fam-r$ranks-$tag$variant"
        spec "target/gpu/bench/$name.toml" "$fam" "$ranks" "$mbs" "hidden=$hidden" "ffn=$((4 * hidden))" "seq=$seq" \
          "microbatch_size=$mbsize" "layers_per_stage=1" "dtype=\"$dtype\"" "checkpoint_every=0" \
          "gelu=\"$gelu\"" "comm=\"$comm\""
        ./target/release/pipewright compile "target/gpu/bench/$name.toml" -o "target/gpu/bench/$name" >/dev/null
      done
    done
  done
done

# Host launch time against the microbatch count (issue 4: under 100 µs per replayed step
# whatever the count): a small model (hidden 256, seq 64, f32, async p2p) so that steps are
# short, dualpipe and dualpipev at 8 to 512 microbatches, on 1, 2 and 4 GPUs.
mkdir -p target/gpu/launch
for ranks in 1 2 4; do
  for fam in dualpipev dualpipe; do
    [ "$ranks" = 1 ] && [ "$fam" = dualpipe ] && continue
    for mbs in 8 32 128 512; do
      name="$fam-r$ranks-m$mbs"
      spec "target/gpu/launch/$name.toml" "$fam" "$ranks" "$mbs" "hidden=256" "ffn=1024" "seq=64" \
        "microbatch_size=1" "layers_per_stage=1" "checkpoint_every=0" "comm=\"async\""
      ./target/release/pipewright compile "target/gpu/launch/$name.toml" -o "target/gpu/launch/$name" >/dev/null
      # What the runtime does not read (the device tool carries 64 MiB at most).
      rm -f "target/gpu/launch/$name/schedule.svg" "target/gpu/launch/$name/trace.json"
    done
  done
done

# Async p2p (the compute stream waits for a batch only where it uses its buffers) against
# blocking, same programs' families, hidden 512, 2 GPUs.
for fam in zb-v 1f1b; do
  for comm in blocking async; do
    name="$fam-r2-h512-$comm"
    spec "target/gpu/bench/$name.toml" "$fam" 2 8 "hidden=512" "ffn=2048" "seq=256" "microbatch_size=3" \
      "layers_per_stage=1" "comm=\"$comm\""
    ./target/release/pipewright compile "target/gpu/bench/$name.toml" -o "target/gpu/bench/$name" --json \
      | python3 -c "import json,sys; r=json.load(sys.stdin); print('$name simulated makespan', r['makespan'])" \
      | tee -a target/gpu/bench/simulated.txt
  done
done

# DualPipe's mirrored gradients exchanged in bf16 (half the bytes of the exposed tail)
# against f32, at the bf16 settings, 2 GPUs.
for setting in "h2048 2048 2048 2 16" "h4096 4096 4096 1 16"; do
  set -- $setting
  name="dualpipe-r2-$1-mirror-bf16"
  spec "target/gpu/bench/$name.toml" dualpipe 2 "$5" "hidden=$2" "ffn=$((4 * $2))" "seq=$3" "microbatch_size=$4" \
    "layers_per_stage=1" "dtype=\"bf16\"" "checkpoint_every=0" "comm=\"async\"" "mirror_sum=\"bf16\""
  ./target/release/pipewright compile "target/gpu/bench/$name.toml" -o "target/gpu/bench/$name" >/dev/null
done

# An optimised plan (issue 6) against its family, same model, 2 GPUs, blocking p2p.
for opt in "" "--optimize"; do
  tag="zb-v-r2-h512${opt:+-opt}"
  spec "target/gpu/bench/$tag.toml" zb-v 2 8 "hidden=512" "ffn=2048" "seq=256" "microbatch_size=3" "layers_per_stage=1"
  ./target/release/pipewright compile "target/gpu/bench/$tag.toml" -o "target/gpu/bench/$tag" $opt --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin); print('$tag simulated makespan', r['makespan'])" \
    | tee -a target/gpu/bench/simulated.txt
done
# optimized SPEC TAG: SPEC compiled with --optimize into target/gpu/bench/TAG, its simulated
# makespan and step noted (the picture left out: the device tool carries 64 MiB at most).
optimized() {
  ./target/release/pipewright compile "$1" -o "target/gpu/bench/$2" --optimize --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin); print('$2 simulated makespan', r['makespan'], 'step', r['step_time'])" \
    | tee -a target/gpu/bench/simulated.txt
  rm -f "target/gpu/bench/$2/schedule.svg"
}
# DualPipe and DualPipeV optimised under the costs measured on 2 × H200 (specs/measured/):
# the optimiser's programs against the family's at the issue's bf16 settings (async p2p,
# GELU fused).
# `-opt-nocontention`: the same costs without `p2p_contention` (compute slowed beside p2p
# batches in flight), to measure what the optimiser gains from knowing it.
plain=$(mktemp -d); mkdir -p "$plain/measured"
for f in specs/measured/*.toml; do grep -v '^p2p_contention' "$f" > "$plain/measured/$(basename "$f")"; done
for case in "dualpipe 2048" "dualpipe 4096" "dualpipev 2048" "dualpipev 4096"; do
  set -- $case
  fam=$1 h=$2 tag="$1-r2-h$2-opt"
  cp "specs/mlp-$fam-h$h-measured.toml" "$plain/"
  for variant in "specs/mlp-$fam-h$h-measured.toml $tag" "$plain/mlp-$fam-h$h-measured.toml $tag-nocontention"; do
    optimized $variant
  done
done
rm -rf "$plain"
# The same at 4 ranks, under costs estimated for 4 × H200 from the 2-GPU profiles
# (specs/mlp-*-r4-*-estimated.toml): what a 4-GPU call's bench runs beside the families.
for case in "dualpipe 2048" "dualpipe 4096" "dualpipev 2048" "dualpipev 4096"; do
  set -- $case
  optimized "specs/mlp-$1-r4-h$2-estimated.toml" "$1-r4-h$2-opt"
done
# And at 2048 under the copy-engine transport's costs (specs/mlp-*-r4-h2048-copy-estimated.toml:
# on 4 ranks NCCL's contention is what the predictions lose most to): run with `--p2p copy`.
for fam in dualpipe dualpipev; do
  optimized "specs/mlp-$fam-r4-h2048-copy-estimated.toml" "$fam-r4-h2048-opt-copy"
done
# DualPipe at 2048 optimised under the costs measured with the copy-engine transport
# (`profile --p2p copy`): run with `--p2p copy`.
optimized specs/mlp-dualpipe-h2048-copy-measured.toml dualpipe-r2-h2048-opt-copy
# DualPipe optimised with early batches planned in (`[optimize] early_batches = true`):
# against the default `-opt` (planned in order), what the simulator's early-batch model
# makes of an optimiser's program (BENCH_FILTER='^dualpipe-r2-h(2048|4096)-opt(-early)?$').
for h in 2048 4096; do
  early=$(mktemp -d)/mlp-dualpipe-h$h-measured.toml
  sed "s|^from = \"measured/|from = \"$PWD/specs/measured/|" "specs/mlp-dualpipe-h$h-measured.toml" > "$early"
  printf '\n[optimize]\nearly_batches = true\n' >> "$early"
  ./target/release/pipewright compile "$early" -o "target/gpu/bench/dualpipe-r2-h$h-opt-early" --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin); print('dualpipe-r2-h$h-opt-early', r['schedule'], 'simulated makespan', r['makespan'], 'step', r['step_time'])" \
    | tee -a target/gpu/bench/simulated.txt
  rm -f "target/gpu/bench/dualpipe-r2-h$h-opt-early/schedule.svg"
done
du -sh target/gpu
