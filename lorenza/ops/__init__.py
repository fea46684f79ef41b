"""The op layer: one entry per op, each checking its arguments and then running the implementation
that the op, declared next to its entry (``backend.declare``), picks for the tensors' device: a Triton kernel
(``lorenza.kernels``), the compiled ``lorenza._C``, or the PyTorch reference (``lorenza.reference``).

The optimizers reach the implementations only through these entries (the public modules
``lorenza.linalg`` and ``lorenza.random`` re-export them). What has one implementation only, the
subspace products and the precision rule, the projector takes from the reference directly.
"""
from .adam import adam_, projected_adam_
from .backend import BackendUnavailable, checked_choice, chosen, resolve
from .linalg import rsvd
from .noise import chunks, combination, norm_sq, normal_, randn
from .perturb import gaussian_add_, low_rank_add_, subspace_add_
from .quantize import dequantize8, quantize8_


def check_backend(op: str, device) -> str:
    """The backend that will run ``op`` for tensors on ``device``; raises :class:`BackendUnavailable`
    now when an explicitly requested one cannot (a step checks before it moves any weight)."""
    return resolve(op, device)


__all__ = ["rsvd", "normal_", "randn", "chunks", "combination", "norm_sq", "gaussian_add_", "low_rank_add_",
           "subspace_add_", "projected_adam_", "adam_", "quantize8_", "dequantize8", "check_backend",
           "chosen", "checked_choice", "BackendUnavailable"]
