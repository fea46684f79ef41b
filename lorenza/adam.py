"""The Adam steps of the low-rank optimizers, dispatched (op ``projected_adam``) to the Triton
kernels (``lorenza.kernels.projected_adam``) or the PyTorch reference."""
import torch

from . import backend
from .reference import adam as reference
from .reference import multi_tensor_adam


def _triton(device) -> bool:
    return backend.resolve("projected_adam", device) == backend.TRITON


@torch.no_grad()
def projected_adam_(param, grad, M, V, projection, **hyper) -> None:
    """One projected Adam step of ``param`` (``reference.adam.projected_adam_``'s arguments)."""
    if _triton(param.device):
        from .kernels import projected_adam
        projected_adam.projected_adam_(param, grad, M, V, projection, **hyper)
    else:
        reference.projected_adam_(param, grad, M, V, projection, **hyper)


@torch.no_grad()
def adam_(params, grads, moments1, moments2, **hyper) -> None:
    """One unprojected Adam step of every tensor, batched into multi-tensor launches."""
    if params and _triton(params[0].device):
        from .kernels import projected_adam
        projected_adam.adam_(params, grads, moments1, moments2, **hyper)
    else:
        multi_tensor_adam.adam_(params, grads, moments1, moments2, **hyper)
