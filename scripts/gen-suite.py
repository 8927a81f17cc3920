#!/usr/bin/env python3
"""Writes specs/suite/: the optimiser's results suite (issue 6).

Each spec describes a model with one stage per rank; `pipewright suite specs/suite`
schedules it with every family that fits (stage costs derived from the same model) and
with the optimiser. Profiles, all with async p2p (the runtime's mode):

- uniform:   F = I = W = 1 (B = 2), p2p = 0.05
- b2f:       F = 1, B = 2 with a lighter weight gradient (I = 1.5, W = 0.5), p2p = 0.05
- slowcomm:  F = I = W = 1, p2p = 1 (a transfer as slow as a forward)
- hetero:    F = I = W = 1, first and last stage 1.5x (embedding, loss/output layer)
- memory:    F = I = W = 1, budget = 1F1B's peak (ranks x one stage's activations)

Overlapped F+B pairs cost F + B: no overlap gain is assumed.
Ranks 4, 8, 16; microbatches 2x, 4x and 8x the ranks.
"""
import os

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "specs", "suite")
ACT = 1_000_000


def lst(xs):
    return "[" + ", ".join(f"{x:g}" for x in xs) + "]"


def spec(profile, ranks, mb):
    f, b, w, p2p = [1.0] * ranks, [2.0] * ranks, [1.0] * ranks, 0.05
    memory = ""
    if profile == "b2f":
        w = [0.5] * ranks
    elif profile == "slowcomm":
        p2p = 1.0
    elif profile == "hetero":
        for s in (0, ranks - 1):
            f[s], b[s], w[s] = 1.5, 3.0, 1.5
    elif profile == "memory":
        memory = (
            "\n[memory]\n"
            f"activation = {ACT}\n"
            f"weight_grad_part = {ACT // 2}\n"
            f"budget = {ranks * ACT}  # 1F1B's peak: rank 0 holds {ranks} activations\n"
        )
    fb = [x + y for x, y in zip(f, b)]
    return f"""# Suite spec (scripts/gen-suite.py): profile {profile}, {ranks} ranks, {mb} microbatches.
[pipeline]
schedule = "1f1b"
ranks = {ranks}
microbatches = {mb}

[costs]
forward = {lst(f)}
backward = {lst(b)}
weight = {lst(w)}
overlapped = {lst(fb)}
p2p = {p2p:g}
comm = "async"
{memory}
[optimize]
time_limit = 10.0
"""


os.makedirs(HERE, exist_ok=True)
for profile in ["uniform", "b2f", "slowcomm", "hetero", "memory"]:
    for ranks in [4, 8, 16]:
        for k in [2, 4, 8]:
            with open(os.path.join(HERE, f"{profile}-r{ranks}-m{ranks * k}.toml"), "w") as out:
                out.write(spec(profile, ranks, ranks * k))
