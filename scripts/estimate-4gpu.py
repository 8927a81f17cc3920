#!/usr/bin/env python3
"""Writes specs/measured/h200x4-{dualpipe,dualpipev}-h{2048,4096}-estimated.toml: costs for
4 x H200 laid out from the committed 2-GPU ones (specs/measured/h200x2-*.toml), until a
4-GPU machine measures them. What `compile --optimize` plans the 4-rank benchmark's
optimised programs with (specs/mlp-*-r4-*-estimated.toml; scripts/gpu-prepare.sh builds
them), and what README's 4-GPU predictions simulate.

The layout (why: each 4-rank stage is paired with the 2-rank stage of the same kind):
- Compute per stage from the 2-rank DualPipeV costs, whose four stages are a first stage
  (no input gradient), two middle ones and a last one (the loss): DualPipe's four stages
  are those four; DualPipeV's eight are the first, six middle ones (the two middle ones'
  mean) and the last.
- FB pairs: a pair of stages (f, b) costs the 2-rank pair of the same kind (the first with
  the last, the last with the first, middle with middle: DualPipe's (1, 2) and (2, 1) as
  measured, DualPipeV's middle pairs their mean).
- p2p, p2p_per_transfer and p2p_contention from the 2-rank DualPipeV costs (p2p assumed
  the same between every pair of GPUs of a 4-GPU host; contention, compute slowed beside
  batches in flight, a property of a rank's GPU and the model); DualPipe's contention
  from the 2-rank DualPipe costs (its batches are DualPipe's).
- per_step and prologue: each rank's from the 2-rank rank whose stages are of the same
  kinds (each rank holds two stages there as here: `ranks4`); DualPipe's from the
  2-rank DualPipe costs with its mirror exchange (`mirror_sum`, `mirror_update`: each
  rank exchanges two mirrored stages with one mirror rank over one hop, as there),
  DualPipeV's from the 2-rank DualPipeV costs.

And for the copy-engine transport (`--p2p copy`), at hidden 2048 only (the one setting a
copy-engine profile measured: h200x2-dualpipe-h2048-copy.toml), h200x4-*-h2048-copy-
estimated.toml: the same compute (timed without p2p, whatever the transport), and what
the transport decides from that profile — p2p, p2p_per_transfer (a transfer of the same
bytes: the same model), p2p_contention (the copy engines take no SMs: compute slowed far
less beside batches in flight) and DualPipe's mirror exchange. On 4 ranks NCCL's
contention is what the predictions lose most to (README, Runtime), so these are what the
optimiser plans the 4-GPU benchmark's `-opt-copy` programs with, run with `--p2p copy`.

Usage: python3 scripts/estimate-4gpu.py   (rewrites the six files; re-simulate after)
"""

import os
import re
import statistics
import tomllib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MEASURED = os.path.join(ROOT, "specs", "measured")


def costs(name):
    path = os.path.join(MEASURED, name)
    with open(path, "rb") as f:
        return tomllib.load(f)["costs"], open(path).readline().strip()


def pairs(c):
    return {(p["f"], p["b"]): p["ms"] for p in c["overlapped_pairs"]}


def ranks4(family, values):
    """2-rank per-rank values for 4 ranks, each rank's from the 2-rank rank whose stages are
    of the same kinds: DualPipe's outer ranks (first and last stage) the first's, its inner
    ones the second's; DualPipeV's rank 0 (first and last stage) the first's, the others
    (middle stages) the second's."""
    if family == "dualpipe":
        return [values[0], values[1], values[1], values[0]]
    return [values[0], values[1], values[1], values[1]]


def fmt(values):
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def fmt_pairs(p):
    return "[" + ", ".join(f"{{ f = {f}, b = {b}, ms = {ms:.4f} }}" for (f, b), ms in sorted(p.items())) + "]"


def session(first_line):
    """Which session's profile a 2-GPU costs file says it came from."""
    found = re.search(r"session \d+", first_line)
    return found.group(0) if found else "a profile"


def header(family, hidden, v_source, d_source, copy_source):
    copy = "" if copy_source is None else (
        f"\n# The transport's costs (p2p, contention, mirror exchange) from h200x2-dualpipe-h{hidden}-copy.toml\n"
        f"# ({session(copy_source)}, `profile --p2p copy`): the copy-engine transport, `--p2p copy`."
    )
    return f"""# ESTIMATED for 4 x H200, not measured there (no 4-GPU machine has been lent): laid out
# for 4 ranks by scripts/estimate-4gpu.py (its doc says how) from the costs measured on
# 2 x H200 and committed beside this file, h200x2-dualpipev-h{hidden}.toml ({session(v_source)})
# and h200x2-dualpipe-h{hidden}.toml ({session(d_source)}).{copy}
# What `compile --optimize` plans the 4-GPU benchmark's optimised {family} program with,
# so that a 4-GPU call runs it at once (scripts/gpu-prepare.sh); once measured there,
# re-profile.
[costs]
"""


def estimate(family, hidden, copy):
    """The costs file's text; `copy`: the transport's costs from the copy-engine profile."""
    v, v_source = costs(f"h200x2-dualpipev-h{hidden}.toml")
    d, d_source = costs(f"h200x2-dualpipe-h{hidden}.toml")
    c, c_source = costs(f"h200x2-dualpipe-h{hidden}-copy.toml") if copy else (None, None)
    vp = pairs(v)
    kinds = ["forward", "backward", "weight", "overlapped"]
    out = {}
    if family == "dualpipe":
        for k in kinds:
            out[k] = list(v[k])
        p = {(0, 3): vp[(0, 3)], (1, 2): vp[(1, 2)], (2, 1): vp[(2, 1)], (3, 0): vp[(3, 0)]}
        step, contention = d, d["p2p_contention"]
    else:
        for k in kinds:
            middle = statistics.mean(v[k][1:3])
            out[k] = [v[k][0]] + [middle] * 6 + [v[k][3]]
        middle = statistics.mean([vp[(1, 2)], vp[(2, 1)]])
        p = {(f, 7 - f): middle for f in range(8)}
        p[(0, 7)], p[(7, 0)] = vp[(0, 3)], vp[(3, 0)]
        step, contention = v, v["p2p_contention"]
    # The transport's own costs: NCCL's from the 2-rank profile of the same family's batches
    # (DualPipeV's p2p: its transfers go both ways, as on 4 ranks), the copy engines' from
    # their one profile.
    link = v
    mirror = d
    if c is not None:
        link, contention, mirror = c, c["p2p_contention"], c
    text = header(family, hidden, v_source, d_source, c_source)
    if c is not None:
        text += 'transport = "copy"\n'
    for k in kinds:
        text += f"{k} = {fmt(out[k])}\n"
    text += f"overlapped_pairs = {fmt_pairs(p)}\n"
    text += f"p2p = {link['p2p']:.4f}\np2p_per_transfer = {link['p2p_per_transfer']:.4f}\n"
    text += f"p2p_contention = {contention:.4f}\n"
    text += f"per_step = {fmt(ranks4(family, step['per_step']))}\n"
    text += f"prologue = {fmt(ranks4(family, step['prologue']))}\n"
    if family == "dualpipe":
        text += f"mirror_sum = {mirror['mirror_sum']:.4f}\nmirror_update = {mirror['mirror_update']:.4f}\n"
    else:
        text += "mirror_sum = 0.0000\n"
    return text


for family in ["dualpipe", "dualpipev"]:
    for hidden, copy in [(2048, False), (4096, False), (2048, True)]:
        name = f"h200x4-{family}-h{hidden}{'-copy' if copy else ''}-estimated.toml"
        path = os.path.join(MEASURED, name)
        with open(path, "w") as f:
            f.write(estimate(family, hidden, copy))
        print("wrote", os.path.relpath(path, ROOT))
