#!/usr/bin/env bash
# Runs on the device machine, 4 GPUs (see gpu-prepare.sh): correctness of every plan under
# target/gpu/plans against the CPU reference and PyTorch, checkpoint/resume, the watchdog
# on a killed rank, GEMM rates, and the benchmarks of target/gpu/bench. Logs under $OUT;
# the summary in $OUT/summary.txt, the benchmark table in $OUT/bench.md, every log in
# $OUT/logs.tgz (the device tool brings back only a few files). BENCH_FILTER=REGEX picks
# the benchmark plans by name (default: the issue's dualpipe/dualpipev settings on 4 GPUs,
# or 2 when only 2 are there, with their optimised programs where built; BENCH_FILTER=.
# runs all that fit, more than one call's time); BENCH_MODES picks the runs of each (default
# "graph eager copy profile": copy for multi-rank plans only). RT=BINARY runs another build.
set -uo pipefail
cd "$(dirname "$0")/.."
# What to run: all (default), or one part: correctness (plans, PyTorch, checkpoints,
# watchdog), watchdog (only that), shared (the benchmark plans of more ranks than GPUs, run
# with the ranks sharing them: not timed), bench (GEMM rates, then the benchmarks) or launch (host launch time against
# the microbatch count, $OUT/launch.txt).
PART="${1:-all}"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
LOGS=$(mktemp -d); trap 'tar czf "$OUT/logs.tgz" -C "$LOGS" .' EXIT
source scripts/gpu-common.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"

if [ "$PART" = all ] || [ "$PART" = launch ]; then
echo "== host launch per replayed step against the microbatch count (hidden 256, seq 64, f32)" | tee -a "$OUT/launch.txt"
# Plans of more ranks than GPUs run with the ranks sharing them (copy engines), tagged: the
# host's launch of a replay does not depend on it, the step time does.
for plan in target/gpu/launch/*/; do
  share=$(ranks_per_gpu "$plan" 2>> "$OUT/launch.txt") || continue
  name=$(basename "$plan"); ranks=$(ranks_of "$plan"); p2p=$(transport_for "$share")
  [ "$share" -gt 1 ] && name="$name[copy, $ranks ranks on $GPUS GPUs]"
  start=$(date +%s.%N)
  timeout 150 "$RT" launch --gpus "$ranks" "$plan" --steps 30 --p2p "$p2p" --ranks-per-gpu "$share" \
    > "$LOGS/launch-$(basename "$plan").log" 2>&1
  wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
  python3 - "$name" "$LOGS/launch-$(basename "$plan").log" "$wall" <<'PY' | tee -a "$OUT/launch.txt"
import re, sys
name, log, wall = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
nodes = [int(n) for n in re.findall(r"graph of (\d+) nodes", log)]
runs = re.findall(r"median step (\S+) ms .*median host launch (\S+) µs", log)
if not (nodes and runs):
    print(f"{name}: FAILED: {log.strip().splitlines()[-1:]}")
else:
    print(f"{name}: graph of up to {max(nodes)} nodes a rank; median step {max(float(r[0]) for r in runs):.3f} ms; "
          f"host launch {max(float(r[1]) for r in runs):.1f} µs (the larger rank's median); {wall} s start to end")
PY
done
fi

if [ "$PART" != bench ] && [ "$PART" != launch ] && [ "$PART" != shared ]; then
if [ "$PART" != watchdog ]; then
echo "== correctness: 4 steps (1 eager, 3 graph replays, SGD between), vs the CPU executor;" \
  "plans of more than one rank with each p2p transport (NCCL, and the copy engines: [copy])" | tee -a "$OUT/summary.txt"
# Plans of more ranks than GPUs run with the ranks sharing them (copy engines only: NCCL
# refuses two ranks on one GPU), tagged [copy, N ranks on G GPUs].
for plan in target/gpu/plans/*/; do
  share=$(ranks_per_gpu "$plan") || continue
  ranks=$(ranks_of "$plan"); transports="nccl"; [ "$ranks" -gt 1 ] && transports="nccl copy"
  [ "$share" -gt 1 ] && transports="copy"
  for p2p in $transports; do
  name=$(basename "$plan"); [ "$p2p" = copy ] && name="$name[copy]"
  log="$LOGS/$(basename "$plan")-$p2p.log"
  [ "$share" -gt 1 ] && name="$(basename "$plan")[copy, $ranks ranks on $GPUS GPUs]"
  timeout 300 "$RT" launch --gpus "$ranks" "$plan" --steps 4 --reference --p2p "$p2p" --ranks-per-gpu "$share" \
    > "$log" 2>&1
  echo "exit $?" >> "$log"
  python3 - "$name" "$log" <<'PY' | tee -a "$OUT/summary.txt"
import re, sys
name, log = sys.argv[1], open(sys.argv[2]).read()
limit = 2e-2 if "bf16" in name else 1e-5
errs = [tuple(map(float, m)) for m in re.findall(r"loss rel. error (\S+), weight-gradient (\S+), weights (\S+)", log)]
worst = [max(e[i] for e in errs) for i in range(3)] if errs else [float("nan")] * 3
ok = errs and all(w <= limit for w in worst) and "exit 0" in log
print(f"{'PASS' if ok else 'FAIL'} {name}: worst loss {worst[0]:.2e}, gradient {worst[1]:.2e}, weights {worst[2]:.2e} (limit {limit:g}, {len(errs)} ranks)")
PY
  done
done

echo "== PyTorch (float64 autograd) on the runtime's first step" | tee -a "$OUT/summary.txt"
for name in dualpipev-r1-f32 1f1b-r2-f32 dualpipe-r4-f32 dualpipev-r4-f32; do
  plan=target/gpu/plans/$name; share=$(ranks_per_gpu "$plan") || continue
  ranks=$(ranks_of "$plan"); p2p=$(transport_for "$share"); tag=$name
  [ "$share" -gt 1 ] && tag="$name[copy, $ranks ranks on $GPUS GPUs]"
  timeout 300 "$RT" launch --gpus "$ranks" "$plan" --steps 1 --dump "$LOGS/dump-$name" --p2p $p2p \
    --ranks-per-gpu "$share" > /dev/null 2>&1
  python3 tests/torch_reference.py "$LOGS/dump-$name" 2>&1 | sed "s/^/$tag: /" | tee -a "$OUT/summary.txt"
done
rm -rf "$LOGS"/dump-*

echo "== checkpoint, stop, resume: the resumed steps' losses equal an uninterrupted run's" | tee -a "$OUT/summary.txt"
plan=target/gpu/plans/1f1b-r2-f32
# On one GPU its two ranks share it (copy engines).
share=$(ranks_per_gpu "$plan"); p2p=$(transport_for "$share")
ck=(launch --gpus 2 "$plan" --p2p "$p2p" --ranks-per-gpu "$share")
timeout 120 "$RT" "${ck[@]}" --steps 4 --checkpoint-dir /tmp/ckA --dump /tmp/dA > "$LOGS/ckpt.log" 2>&1
timeout 120 "$RT" "${ck[@]}" --steps 2 --checkpoint-dir /tmp/ckB >> "$LOGS/ckpt.log" 2>&1
# The resumed run without this machine's kernel and tuning cache (an empty one), as if on
# another machine: it must use the GEMM algorithms its checkpoint records.
PIPEWRIGHT_CACHE_DIR=$(mktemp -d) timeout 120 "$RT" "${ck[@]}" --steps 4 --checkpoint-dir /tmp/ckB --resume --dump /tmp/dB >> "$LOGS/ckpt.log" 2>&1
python3 - <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import json
a = json.load(open("/tmp/dA/rank1-losses.json"))["losses"]
b = json.load(open("/tmp/dB/rank1-losses.json"))
assert b["first_step"] == 2, b
same = a[2:4] == b["losses"]
print(f"checkpoint/resume: steps 2-3 losses {'bitwise equal' if same else 'DIFFER'}: {a[2:4]} vs {b['losses']}")
PY
fi

# (transport, ranks, ranks per GPU): each rank on a GPU of its own with either transport
# (4 ranks, else 2, where the GPUs suffice), and on fewer GPUs the ranks sharing them
# (copy engines, no NCCL communicator): 4 on 2 GPUs; 2 and 4 on one.
W=$((GPUS >= 4 ? 4 : 2)); setups=""
[ "$GPUS" -ge "$W" ] && setups="nccl:$W:1 copy:$W:1"
[ "$GPUS" -lt 2 ] && setups="copy:2:2"
[ "$GPUS" -lt 4 ] && [ $((4 % GPUS)) -eq 0 ] && setups="$setups copy:4:$((4 / GPUS))"
for setup in $setups; do
IFS=: read -r p2p W share <<< "$setup"; victim=$((W - 1))
tag="$p2p p2p"; [ "$share" -gt 1 ] && tag="$tag, $W ranks on $GPUS GPUs"
echo "== watchdog ($tag): rank $victim of $W killed mid-run; every other rank must end within 60 s, naming its op" | tee -a "$OUT/summary.txt"
plan=target/gpu/bench/dualpipe-r$W-h512
pids=(); port=29533; [ "$p2p" = copy ] && port=$((29543 + share))
for r in $(seq 0 $((W - 1))); do
  RANK=$r WORLD_SIZE=$W LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$RT" run "$plan" --steps 100000000 --watchdog 20 --p2p "$p2p" --ranks-per-gpu "$share" \
    > "$LOGS/kill-$p2p-$share-rank$r.log" 2>&1 &
  pids+=($!)
done
sleep 12
kill -9 "${pids[$victim]}"; killed=$(date +%s.%N)
for r in $(seq 0 $((W - 2))); do
  timeout 90 tail --pid="${pids[$r]}" -f /dev/null; wait "${pids[$r]}"; code=$?
  took=$(python3 -c "import time; print(f'{time.time() - $killed:.1f}')")
  echo "rank $r: exit $code, $took s after the kill: $(grep -m1 '^error' "$LOGS/kill-$p2p-$share-rank$r.log" | cut -c1-400)" | tee -a "$OUT/summary.txt"
done
for r in $(seq 0 $((W - 2))); do kill -9 "${pids[$r]}" 2>/dev/null; done
done

fi
if [ "$PART" != correctness ] && [ "$PART" != launch ] && [ "$PART" != watchdog ] && [ "$PART" != shared ]; then
echo "== GEMM rates (the FLOP floor)" | tee -a "$OUT/summary.txt"
for shape in "f32 768 2048 512" "bf16 4096 8192 2048" "bf16 4096 16384 4096" "bf16 8192 8192 8192" "f32 8192 8192 8192"; do
  set -- $shape
  "$RT" gemm-rate --dtype "$1" --m "$2" --n "$3" --k "$4" 2>&1 | tee -a "$OUT/summary.txt" "$LOGS/gemm.txt"
done

echo "== sustained GEMM rates (about a second of back-to-back products, random data)" | tee -a "$OUT/summary.txt"
for shape in "bf16 4096 16384 4096 2000" "bf16 4096 8192 2048 6000" "f32 768 2048 512 20000"; do
  set -- $shape
  "$RT" gemm-rate --dtype "$1" --m "$2" --n "$3" --k "$4" --iters "$5" 2>&1 | tee -a "$LOGS/gemm-sustained.txt" | sed 's/^/sustained /' | tee -a "$OUT/summary.txt"
done

echo "== benchmarks: graph replay (15 steps), eager (12), profile (ideal, nodes.md; 4)" | tee -a "$OUT/summary.txt"
# By default the issue's settings on this machine's largest rank count (4, else 2), and
# the optimiser's programs of them that gpu-prepare.sh built (`-opt`; `-opt-copy`, planned
# for the copy engines, with them only): the rest (1-GPU baselines, async vs blocking,
# mirror bf16) with BENCH_FILTER.
W=$((GPUS >= 4 ? 4 : 2))
for plan in target/gpu/bench/*/; do
  [[ $(basename "$plan") =~ ${BENCH_FILTER:-^dualpipev?-r$W-h[0-9]+(-opt(-copy)?)?$} ]] || continue
  fits "$plan" || continue
  name=$(basename "$plan"); ranks=$(ranks_of "$plan")
  modes=${BENCH_MODES:-graph eager copy profile}; [ "$ranks" -gt 1 ] || modes=${modes//copy/}
  # A program planned for the copy engines (`-opt-copy`) runs with them only (its graph
  # run would use them too: the plan's transport is the runtime's default).
  [[ $(planned_for "$plan") == copy && -z ${BENCH_MODES:-} ]] && modes=copy
  for mode in ${modes//profile/}; do
    # The graph run ends with 10 replays of each rank's step without its p2p: the ideal.
    # `copy`: the graph run again with the copy-engine transport.
    flag="--steps 15 --compute-alone 10"; [ "$mode" = eager ] && flag="--eager --steps 12"
    [ "$mode" = copy ] && flag="$flag --p2p copy"
    timeout 200 "$RT" launch --gpus "$ranks" "$plan" $flag > "$LOGS/bench-$name-$mode.log" 2>&1
    grep -E "median|graph of|error|note" "$LOGS/bench-$name-$mode.log" | sed "s/^/$name: /" | tee -a "$OUT/summary.txt"
  done
  if [[ $modes == *profile* ]]; then
    timeout 200 "$RT" profile --gpus "$ranks" "$plan" --steps 4 -o "$LOGS/profile-$name" > "$LOGS/bench-$name-profile.log" 2>&1
    cp "$LOGS/profile-$name/nodes.md" "$OUT/nodes-$name.md" 2>/dev/null
  fi
  # The table so far (what a call cut short still brings back).
  python3 scripts/bench-table.py "$LOGS" > "$OUT/bench.md"
done
tee -a "$OUT/summary.txt" < "$OUT/bench.md"
fi

if [ "$PART" = shared ]; then
# Benchmark plans of more ranks than this machine has GPUs (the 4-rank ones on 2), their
# ranks sharing the GPUs (copy engines): not timed (the ranks of a GPU take turns on it),
# but they must run, and an optimised program must compute its family's losses (the
# first step's, before any update: the same forwards in another order).
echo "== benchmark plans of more ranks than GPUs, ranks sharing them (copy engines; not timed)" | tee -a "$OUT/summary.txt"
for plan in target/gpu/bench/*/; do
  name=$(basename "$plan")
  [[ $name =~ ${SHARED_FILTER:-^dualpipev?-r4-h(2048|4096)(-opt(-copy)?)?$} ]] || continue
  share=$(ranks_per_gpu "$plan") || continue; [ "$share" -gt 1 ] || continue
  timeout 300 "$RT" launch --gpus "$(ranks_of "$plan")" "$plan" --steps 3 --p2p copy --ranks-per-gpu "$share" \
    > "$LOGS/shared-$name.log" 2>&1
  echo "exit $?" >> "$LOGS/shared-$name.log"
done
python3 - "$LOGS" <<'PY' | tee -a "$OUT/summary.txt"
import pathlib, re, sys
logs = pathlib.Path(sys.argv[1])
def first_losses(log):
    """Step 0's losses by rank, as printed (6 decimals), and the slowest rank's last step (ms)."""
    text = log.read_text()
    losses = {int(r): l for r, l in re.findall(r"rank (\d+) step 0: \S+ ms, losses \[(.*)\]", text)}
    last = [float(ms) for ms in re.findall(r"rank \d+ step 2: (\S+) ms", text)]
    return ("exit 0" in text), losses, max(last, default=float("nan"))
for log in sorted(logs.glob("shared-*.log")):
    name = log.stem.removeprefix("shared-")
    ok, losses, ms = first_losses(log)
    line = f"{'PASS' if ok and losses else 'FAIL'} {name}: ran 3 steps (last {ms:.1f} ms, shared GPUs)"
    family = logs / f"shared-{re.sub(r'-opt(-copy)?$', '', name)}.log"
    if re.search(r"-opt(-copy)?$", name) and family.exists():
        _, theirs, _ = first_losses(family)
        same = losses == theirs and any(losses.values())
        line += f"; first-step losses {'equal' if same else 'DIFFER from'} its family's"
        if not same:
            line = "FAIL" + line[4:]
    print(line)
PY
fi

echo "== a refused plan: the wrong world size" | tee -a "$OUT/summary.txt"
WORLD_SIZE=3 RANK=0 "$RT" check target/gpu/plans/1f1b-r2-f32/ 2>&1 | tee -a "$OUT/summary.txt"; echo "exit $?" | tee -a "$OUT/summary.txt"
