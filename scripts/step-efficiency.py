#!/usr/bin/env python3
"""One line for a graph run with `--compute-alone` (gpu-sweep.sh, gpu-ab.sh): its 15-step
median, the busiest rank's compute alone, the whole step right after it, and their ratio,
the efficiency at the same clocks. Usage: step-efficiency.py PLAN NAME LOG"""
import re
import sys

plan, name, text = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
num = lambda pattern: [float(x) for x in re.findall(pattern, text)]
graph = num(r"graph: median step (\S+) ms")
alone = num(r"without its p2p\): median step (\S+) ms")
after = num(r"right after the compute alone: median step (\S+) ms")
if not (graph and alone and after):
    print(f"{plan} {name}: FAILED: {text.strip().splitlines()[-1:]}")
else:
    print(f"{plan} {name}: step {max(graph):.3f} ms (15-step median); compute alone {max(alone):.3f} ms, "
          f"step after it {max(after):.3f} ms: efficiency {max(alone) / max(after):.3f}")
