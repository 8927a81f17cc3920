#!/usr/bin/env python3
"""Where a simulated step and a measured one part ways, op by op (what found that the
prologue delayed DualPipeV's second rank, session 10).

Usage: timeline-drift.py PLAN_DIR SPEC PROFILE_DIR [--all]

Simulates PLAN_DIR/programs.json under SPEC (`pipewright simulate`, release build) and
compares, rank by rank in program order, each compute op's end with its end in
PROFILE_DIR's whole-step graph replays (`pipewright-runtime profile`, rank<r>.json:
graph_start_ms, graph_ms), both from the step's start. Prints the ops where the drift
(measured end − simulated end) moves by more than 0.15 ms from the op before (all ops
with --all), and each rank's final drift. Run from the repository root."""
import json
import subprocess
import sys
import tempfile

args = [a for a in sys.argv[1:] if a != "--all"]
if len(args) != 3:
    sys.exit(__doc__)
plan, spec, profile = args
every = "--all" in sys.argv
with tempfile.TemporaryDirectory() as out:
    subprocess.run(
        ["target/release/pipewright", "simulate", f"{plan}/programs.json", "--spec", spec, "-o", out],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    trace = json.load(open(f"{out}/trace.json"))
events = [e for e in (trace["traceEvents"] if isinstance(trace, dict) else trace) if e.get("ph") == "X"]
r = 0
while True:
    try:
        measured = json.load(open(f"{profile}/rank{r}.json"))
    except FileNotFoundError:
        break
    ops = {o["label"]: o for o in measured["ops"] if o.get("graph_start_ms") is not None}
    simulated = sorted((e for e in events if e["pid"] == 0 and e["tid"] == r), key=lambda e: e["ts"])
    print(f"rank {r} (measured graph step {measured.get('graph_step_ms') or float('nan'):.3f} ms)")
    before = 0.0
    for e in simulated:
        m = ops.get(e["name"])
        if m is None:
            continue
        sim_end = (e["ts"] + e["dur"]) / 1000
        drift = m["graph_start_ms"] + m["graph_ms"] - sim_end
        if every or abs(drift - before) > 0.15:
            print(
                f"  {e['name']:>14} simulated {e['ts'] / 1000:8.3f} + {e['dur'] / 1000:6.3f}, "
                f"measured {m['graph_start_ms']:8.3f} + {m['graph_ms']:6.3f}: drift {drift:+.3f} ms"
            )
        before = drift
    print(f"  final drift {before:+.3f} ms")
    r += 1
