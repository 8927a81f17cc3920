# Sourced by gpu-run.sh and gpu-diag.sh (on the device machine, from the repository root):
# the runtime binary ($RT, default target/gpu/pipewright-runtime: another build to run the
# same checks with, e.g. a branch's), this machine's GPU count, and which plans fit it. Needs $OUT.
export NCCL_NVLS_ENABLE=0
RT=${RT:-target/gpu/pipewright-runtime}
GPUS=$(nvidia-smi -L | wc -l)
ranks_of() { python3 -c "import json;print(json.load(open('$1/plan.json'))['world_size'])"; }
# planned_for PLAN: the p2p transport the plan was planned for (the runtime's default).
planned_for() { python3 -c "import json;print(json.load(open('$1/plan.json')).get('transport', 'nccl'))"; }
# fits PLAN [LOG]: the plan needs no more GPUs than this machine has (else say so in LOG,
# default $OUT/summary.txt, and skip it).
fits() {
  local n; n=$(ranks_of "$1")
  if [ "$n" -gt "$GPUS" ]; then
    echo "SKIP $(basename "$1"): needs $n GPUs, this machine has $GPUS" | tee -a "${2:-$OUT/summary.txt}"
    return 1
  fi
}
# ranks_per_gpu PLAN: how many of the plan's ranks each GPU of this machine runs: 1 when it
# fits, else (more ranks than GPUs, a multiple of them) ranks / GPUs — ranks sharing GPUs,
# copy-engine p2p, a correctness check rather than a speed one; else says SKIP (fits) and
# fails.
ranks_per_gpu() {
  local n; n=$(ranks_of "$1")
  if [ "$n" -le "$GPUS" ]; then echo 1
  elif [ $((n % GPUS)) -eq 0 ]; then echo $((n / GPUS))
  else fits "$1" >&2; return 1
  fi
}
# transport_for SHARE: the p2p transport of ranks SHARE to a GPU: the copy engines when
# they share one (NCCL refuses two ranks on one GPU), else NCCL.
transport_for() { if [ "$1" -gt 1 ]; then echo copy; else echo nccl; fi; }
