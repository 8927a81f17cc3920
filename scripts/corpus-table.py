#!/usr/bin/env python3
"""Prints README's corpus table: every spec in specs/ compiled as written and with
--optimize (release binary: cargo build --release first)."""
import glob, json, os, subprocess, sys, tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BIN = os.path.join(ROOT, "target", "release", "pipewright")


def compile_json(spec, *extra):
    with tempfile.TemporaryDirectory() as out:
        run = subprocess.run([BIN, "compile", spec, "-o", out, "--json", *extra], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"{spec}: {run.stderr}")
        return json.loads(run.stdout)


print("| spec | schedule | comm | ranks | mb | family makespan | optimised | optimised as | lower bound | gap before → after | step: family → optimised | found at (s) |")
print("|---|---|---|---:|---:|---:|---:|---|---:|---|---|---:|")
for spec in sorted(glob.glob(os.path.join(ROOT, "specs", "*.toml"))):
    plain = compile_json(spec)
    opt = compile_json(spec, "--optimize")
    o = opt["optimizer"]
    # Under async p2p the optimiser plans in order (async_in_order), or the family with its
    # early batches is kept (compile_with).
    kept = o.get("early_family_step") is not None and not opt["schedule"].endswith("+optimized")
    how = "the family, kept" if kept else opt["comm"]
    print(
        f"| {os.path.basename(spec)} | {plain['schedule']} | {plain['comm']} | {plain['world_size']} | {plain['microbatches']} "
        f"| {plain['makespan']:.1f} | {opt['makespan']:.1f} | {how} | {opt['lower_bound']:.1f} "
        f"| {plain['gap'] * 100:.1f}% → {opt['gap'] * 100:.1f}% | {plain['step_time']:.2f} → {opt['step_time']:.2f} "
        f"| {o['seconds_to_best']:.2f} |"
    )
