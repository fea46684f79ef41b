"""The unprojected Adam update of many parameters at once.

It computes ``reference.adam.adam_`` (GaLore's formula: ``N = M / (sqrt(V) + eps)``, weight decay
after the update) through PyTorch's fused multi-tensor Adam kernel where it applies: one call per
device and dtype. Parameters whose moments have another dtype than the parameter (bf16 weights
keep fp32 moments) take the per-tensor reference.
"""
import math
from collections import defaultdict

import torch

from . import adam as reference

FUSED_DEVICES = ("cpu", "cuda")


def _fusable(param, grad, M, V) -> bool:
    # the fused kernel walks the four tensors' storage in step: their layouts must agree
    return (hasattr(torch, "_fused_adam_") and param.device.type in FUSED_DEVICES
            and param.dtype == grad.dtype == M.dtype and param.dtype in (torch.float32, torch.float64)
            and param.stride() == grad.stride() == M.stride() == V.stride())


def adam_(params, grads, moments1, moments2, *, beta1, beta2, eps, step_size, decay) -> None:
    """One Adam step of ``params`` (the numbers of ``adam.adam_``)."""
    # The fused kernel applies its own bias corrections for a step count: called with t = 1 it
    # moves by lr' sqrt(1 - beta2) / (1 - beta1) * M / (sqrt(V) + eps' sqrt(1 - beta2)), which is
    # step_size * M / (sqrt(V) + eps) for the lr' and eps' below.
    batches = defaultdict(list)
    # the fused kernel takes the step size as a float: a traced step's tensor takes the per-tensor path
    fused = not isinstance(step_size, torch.Tensor)
    for p, g, m, v in zip(params, grads, moments1, moments2):
        if fused and _fusable(p, g, m, v):
            batches[(p.device, p.dtype)].append((p, g, m, v))
        else:
            reference.adam_(p, g, m, v, beta1=beta1, beta2=beta2, eps=eps, step_size=step_size, decay=decay)
    for (device, _), batch in batches.items():
        ps, gs, ms, vs = (list(t) for t in zip(*batch))
        steps = [torch.tensor(1.0, device=device)] * len(ps)
        torch._fused_adam_(ps, gs, ms, vs, [], steps, lr=step_size * (1 - beta1) / math.sqrt(1 - beta2),
                           beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps / math.sqrt(1 - beta2),
                           amsgrad=False, maximize=False)
        if decay:
            torch._foreach_add_(ps, ps, alpha=-decay)
