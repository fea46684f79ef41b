"""The unprojected Adam update of many parameters at once.

It computes ``reference.adam.adam_`` (GaLore's formula: ``N = M / (sqrt(V) + eps)``, step
``lr sqrt(1 - b2^t) / (1 - b1^t)``, weight decay after the update) through PyTorch's fused
multi-tensor Adam kernel where it applies, one call per (group, step, device, dtype). That
kernel computes ``lr / (1 - b1^t) * M / (sqrt(V) / sqrt(1 - b2^t) + eps')``, which is our formula
exactly when ``eps' = eps / sqrt(1 - b2^t)``. Parameters whose moments have another dtype than
the parameter (bf16 weights keep fp32 moments) take the per-tensor reference.
"""
import math
from collections import defaultdict

import torch

from ..reference import adam as reference

FUSED_DEVICES = ("cpu", "cuda")


def _fusable(param, grad, M) -> bool:
    return (hasattr(torch, "_fused_adam_") and param.device.type in FUSED_DEVICES
            and param.dtype == grad.dtype == M.dtype and param.dtype in (torch.float32, torch.float64))


def adam_(group: dict, params, grads, moments1, moments2, step: int) -> None:
    """One Adam step (already counted: ``step`` is t >= 1) of ``params`` sharing ``group``."""
    beta1, beta2 = group["betas"]
    lr, eps = group["lr"], group["eps"]
    bias2 = 1 - beta2**step
    step_size = lr * math.sqrt(bias2) / (1 - beta1**step)
    decay = lr * group["weight_decay"]
    batches = defaultdict(list)
    for p, g, m, v in zip(params, grads, moments1, moments2):
        if _fusable(p, g, m):
            batches[(p.device, p.dtype)].append((p, g, m, v))
        else:
            reference.adam_(p, g, m, v, beta1=beta1, beta2=beta2, eps=eps, step_size=step_size, decay=decay)
    for (device, _), batch in batches.items():
        ps, gs, ms, vs = (list(t) for t in zip(*batch))
        steps = [torch.tensor(float(step), device=device)] * len(ps)
        torch._fused_adam_(ps, gs, ms, vs, [], steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=0.0,
                           eps=eps / math.sqrt(bias2), amsgrad=False, maximize=False)
        if decay:
            torch._foreach_add_(ps, ps, alpha=-decay)
