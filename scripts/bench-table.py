#!/usr/bin/env python3
"""The benchmark table of scripts/gpu-run.sh: per plan the graph and eager step times (the
slowest rank's median), the host launch time, the bubble-free ideal (the busiest rank's
measured compute, from `profile`: its compute nodes each timed alone), efficiency = ideal / step, and the FLOP floor (the
busiest rank's GEMM FLOPs per step at the GEMM rate measured for the plan's dtype and
largest GEMM shape) with the fraction of it reached (floor / step); efficiency also against
the eager step."""
import json, pathlib, re, sys

out = pathlib.Path(sys.argv[1])
bench = pathlib.Path("target/gpu/bench")
rates = {}
for line in (out / "gemm.txt").read_text().splitlines():
    m = re.match(r"gemm (\w+) (\d+)x(\d+)x(\d+): \S+ ms, (\S+) TFLOP/s", line)
    if m:
        rates[(m[1], int(m[2]), int(m[3]), int(m[4]))] = float(m[5])


def steps(log):
    text = (out / log).read_text() if (out / log).exists() else ""
    runs = re.findall(r"median step (\S+) ms .*median host launch (\S+) µs", text)
    if not runs:
        return None, None
    return max(float(a) for a, _ in runs), max(float(b) for _, b in runs if b != "NaN") if any(b != "NaN" for _, b in runs) else None


print("| plan | dtype | step, graph (ms) | step, eager (ms) | host launch (µs) | ideal (ms) | efficiency | efficiency, eager | FLOP floor (ms) | of floor |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for plan in sorted(bench.iterdir()):
    if not (plan / "plan.json").exists():
        continue
    p = json.loads((plan / "plan.json").read_text())
    name, dtype = plan.name, p["model"]["dtype"]
    graph, launch = steps(f"bench-{name}-graph.log")
    eager, _ = steps(f"bench-{name}-eager.log")
    if graph is None and eager is None:
        continue  # not run
    profiles = [json.loads(f.read_text()) for f in sorted((out / f"profile-{name}").glob("rank*.json"))]
    # The rank's compute nodes each timed alone when the profile timed nodes (its ops'
    # sum otherwise): what RankProfile::ideal_ms gives.
    ideal = max((q.get("node_compute_ms") or q["compute_ms"] for q in profiles), default=float("nan"))
    flops = max(sum(2 * n["m"] * n["n"] * n["k"] for n in r["nodes"] if n.get("op") == "gemm") for r in p["ranks"])
    # The rate of this dtype at the shape closest to the model's forward GEMM.
    t, h, f = p["model"]["seq"] * p["model"]["microbatch_size"], p["model"]["hidden"], p["model"]["ffn"]
    cands = [(abs(m - t) + abs(n - f) + abs(k - h), r) for (d, m, n, k), r in rates.items() if d == dtype]
    rate = min(cands)[1] if cands else float("nan")
    floor = flops / (rate * 1e12) * 1e3
    fmt = lambda x: "–" if x is None or x != x else f"{x:.3f}"
    print(f"| {name} | {dtype} | {fmt(graph)} | {fmt(eager)} | {fmt(launch)} | {fmt(ideal)} | "
          f"{fmt(ideal / graph if graph else None)} | {fmt(ideal / eager if eager else None)} | "
          f"{fmt(floor)} @ {rate:.0f} TFLOP/s | {fmt(floor / graph if graph else None)} |")
