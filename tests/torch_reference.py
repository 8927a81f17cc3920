#!/usr/bin/env python3
"""PyTorch cross-check of a runtime step (runs on the GPU machine, which has PyTorch).

    pipewright-runtime launch --gpus N PLAN_DIR --steps 1 --dump DUMP
    python3 tests/torch_reference.py DUMP

Loads the initial weights, inputs and targets the runtime dumped (safetensors), computes
the model with PyTorch autograd in float64 — every layer Linear(h -> ffn, no bias), GELU
(tanh), Linear(ffn -> h), loss the mean squared error per microbatch, the step's objective
their mean — and compares the per-microbatch losses and the weight gradients with the
runtime's. Exit 1 if the relative error exceeds 1e-5 (f32)."""
import glob
import json
import re
import sys

import torch
from safetensors.torch import load_file

dump = sys.argv[1]
tol = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-5
initial, final, losses = {}, {}, {}
for f in glob.glob(f"{dump}/rank*-initial.safetensors"):
    initial.update(load_file(f))
for f in glob.glob(f"{dump}/rank*-final.safetensors"):
    final.update(load_file(f))
for f in glob.glob(f"{dump}/rank*-losses.json"):
    run = json.load(open(f))
    assert run["first_step"] == 0, "run the runtime from step 0 with --steps 1"
    for g, v in enumerate(run["losses"][0]):
        if v is not None:
            losses[g] = v

idx = lambda prefix: sorted(int(re.match(rf"{prefix}\.(\d+)$", k).group(1)) for k in initial if re.match(rf"{prefix}\.\d+$", k))
layers, mbs = idx("w1"), idx("input")
assert layers == list(range(len(layers))) and mbs == list(range(len(mbs))), (layers, mbs)
w1 = [initial[f"w1.{l}"].double().requires_grad_() for l in layers]
w2 = [initial[f"w2.{l}"].double().requires_grad_() for l in layers]
objective = 0.0
want_losses = []
for g in mbs:
    x = initial[f"input.{g}"].double()
    for l in layers:
        x = torch.nn.functional.gelu(x @ w1[l], approximate="tanh") @ w2[l]
    loss = ((x - initial[f"target.{g}"].double()) ** 2).mean()
    want_losses.append(loss.item())
    objective = objective + loss / len(mbs)
objective.backward()


def rel(a, b):
    return (torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double())).item()


loss_err = max(abs(losses[g] - want_losses[g]) / abs(want_losses[g]) for g in mbs)
grad_err = max(max(rel(final[f"g1.{l}"], w1[l].grad), rel(final[f"g2.{l}"], w2[l].grad)) for l in layers)
print(f"torch reference: {len(mbs)} microbatches, {len(layers)} layers: worst loss rel. error {loss_err:.2e}, worst weight-gradient rel. error {grad_err:.2e}")
sys.exit(0 if loss_err <= tol and grad_err <= tol else 1)
