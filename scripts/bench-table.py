#!/usr/bin/env python3
"""The benchmark table of scripts/gpu-run.sh: per plan the graph and eager step times (the
slowest rank's median), the host launch time, the bubble-free ideal (the slowest rank's
step graph replayed without its p2p, `run --compute-alone`: its compute with nothing to
wait for, as the graph runs it; beside it `profile`'s sum of the rank's compute nodes each
timed alone), efficiency = ideal / step, where the step is the median of as many whole
steps replayed right after those (the same clocks: an H200's drift by a few percent over a
run, which comparing with the 15-step median would count; that median for one rank), and
the FLOP floor (the
busiest rank's GEMM FLOPs per step at the GEMM rate measured for the plan's dtype and
forward product's shape, burst: 20 calls) with the fraction of it reached (floor / step),
and the same at the rate it sustains (about a second of calls: the GPU lowers its clocks
under load); efficiency also against the eager step. A plan run again with the copy-engine
transport (`--p2p copy`, graph only) gets a row of its own."""
import json, pathlib, re, sys

out = pathlib.Path(sys.argv[1])
bench = pathlib.Path("target/gpu/bench")

def gemm_rates(name):
    """Rates by (dtype, m, n, k) from gemm-rate's lines in the file `name`."""
    rates, path = {}, out / name
    for line in (path.read_text() if path.exists() else "").splitlines():
        m = re.match(r"gemm (\w+) (\d+)x(\d+)x(\d+): \S+ ms, (\S+) TFLOP/s", line)
        if m:
            rates[(m[1], int(m[2]), int(m[3]), int(m[4]))] = float(m[5])
    return rates


# A few products' burst (20 calls) and sustained (about a second of calls) rates.
rates, sustained = gemm_rates("gemm.txt"), gemm_rates("gemm-sustained.txt")


def rate_for(rates, dtype, t, h, f):
    """The rate of this dtype at the shape closest to the model's forward product."""
    cands = [(abs(m - t) + abs(n - f) + abs(k - h), r) for (d, m, n, k), r in rates.items() if d == dtype]
    return min(cands)[1] if cands else float("nan")



def steps(log):
    text = (out / log).read_text() if (out / log).exists() else ""
    runs = re.findall(r"median step (\S+) ms .*median host launch (\S+) µs", text)
    if not runs:
        return None, None
    return max(float(a) for a, _ in runs), max(float(b) for _, b in runs if b != "NaN") if any(b != "NaN" for _, b in runs) else None


print("| plan | dtype | step, graph (ms) | step, eager (ms) | host launch (µs) | ideal: compute alone (ms) | step after it (ms) | efficiency | efficiency, eager | nodes alone (ms) | FLOP floor (ms) | of floor | floor at the sustained rate (ms) | of it |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for plan in sorted(bench.iterdir()):
    if not (plan / "plan.json").exists():
        continue
    p = json.loads((plan / "plan.json").read_text())
    name, dtype = plan.name, p["model"]["dtype"]
    for label, graph_log, eager_log in [(name, f"bench-{name}-graph.log", f"bench-{name}-eager.log"),
                                        (f"{name} (--p2p copy)", f"bench-{name}-copy.log", None)]:
        graph, launch = steps(graph_log)
        eager, _ = steps(eager_log) if eager_log else (None, None)
        if graph is None and eager is None:
            continue  # not run
        # The ideal: the slowest rank's step graph replayed without its p2p (`--compute-alone`).
        log = out / graph_log
        alone = re.findall(r"compute alone \(the step's graph without its p2p\): median step (\S+) ms", log.read_text() if log.exists() else "")
        ideal = max((float(a) for a in alone), default=float("nan"))
        # The whole steps replayed right after the compute alone (the same clocks).
        after = re.findall(r"whole step right after the compute alone: median step (\S+) ms", log.read_text() if log.exists() else "")
        step = max((float(a) for a in after), default=graph)
        # For reference, `profile`'s: the busiest rank's compute nodes each timed alone.
        profiles = [json.loads(f.read_text()) for f in sorted((out / f"profile-{name}").glob("rank*.json"))] if eager_log else []
        nodes = max((q.get("node_compute_ms") or q["compute_ms"] for q in profiles), default=float("nan"))
        flops = max(sum(2 * n["m"] * n["n"] * n["k"] for n in r["nodes"] if n.get("op") == "gemm") for r in p["ranks"])
        t, h, f = p["model"]["seq"] * p["model"]["microbatch_size"], p["model"]["hidden"], p["model"]["ffn"]
        rate, held = rate_for(rates, dtype, t, h, f), rate_for(sustained, dtype, t, h, f)
        floor, floor_held = flops / (rate * 1e12) * 1e3, flops / (held * 1e12) * 1e3
        fmt = lambda x: "–" if x is None or x != x else f"{x:.3f}"
        print(f"| {label} | {dtype} | {fmt(graph)} | {fmt(eager)} | {fmt(launch)} | {fmt(ideal)} | "
              f"{fmt(step if after else None)} | {fmt(ideal / step if step else None)} | {fmt(ideal / eager if eager else None)} | {fmt(nodes)} | "
              f"{fmt(floor)} @ {rate:.0f} TFLOP/s | {fmt(floor / graph if graph else None)} | "
              f"{fmt(floor_held)} @ {held:.0f} TFLOP/s | {fmt(floor_held / graph if graph else None)} |")
