"""Ops ``gaussian_add``, ``low_rank_add`` and ``subspace_add``: a weight moved in place along seeded
noise (docs/algorithms.md, sections 2 to 5), never forming a weight-sized temporary."""
import functools

import torch

from ..reference import perturb as reference
from . import backend
from .noise import nonzero_terms, normal_

# Their PyTorch implementations: the reference's loops with the noise of the noise op, whose backend
# is chosen on its own (the compiled Philox on the CPU when built: making the noise is what these
# loops spend their time on).
pytorch_gaussian_add_ = functools.partial(reference.gaussian_add_, fill=normal_)
pytorch_low_rank_add_ = functools.partial(reference.low_rank_add_, fill=normal_)
pytorch_subspace_add_ = functools.partial(reference.subspace_add_, fill=normal_)


def _triton_gaussian_add_(*args, **kwargs):
    from ..kernels import perturb as kernels
    return kernels.gaussian_add_(*args, **kwargs)


def _triton_low_rank_add_(*args, **kwargs):
    from ..kernels import perturb as kernels
    return kernels.low_rank_add_(*args, **kwargs)


def _triton_subspace_add_(*args, **kwargs):
    from ..kernels import perturb as kernels
    return kernels.subspace_add_(*args, **kwargs)


def _starts_inside_the_stream(args, kwargs) -> bool:
    """A shard's noise starts at an offset (``first``): only the PyTorch loop takes one."""
    return kwargs.get("first", 0) != 0


GAUSSIAN_ADD = backend.declare("gaussian_add", torch=pytorch_gaussian_add_, triton=_triton_gaussian_add_,
                               writes=(0,), torch_only=_starts_inside_the_stream)
LOW_RANK_ADD = backend.declare("low_rank_add", torch=pytorch_low_rank_add_, triton=_triton_low_rank_add_,
                               writes=(0,))
SUBSPACE_ADD = backend.declare("subspace_add", torch=pytorch_subspace_add_, triton=_triton_subspace_add_,
                               writes=(0,), torch_only=_starts_inside_the_stream)


@torch.no_grad()
def gaussian_add_(tensor: torch.Tensor, coeffs, keys, scale: float = 1.0, *, first: int = 0) -> torch.Tensor:
    """In place ``tensor = scale * tensor + sum_j coeffs[j] * z_j``, ``z_j`` the stream ``keys[j]``
    shaped like it (MeZO, AdaZeta and AdaZo-SAM probes; MeZO's fused restore-and-update).

    Arithmetic is float32 (float64 for a float64 tensor), rounded once to the tensor's dtype.
    ``first`` is the stream index of the tensor's first element, for the shard of a larger tensor
    (then the PyTorch loop runs, with the noise op's backend).
    """
    if not tensor.is_contiguous():
        raise ValueError("add_randn_ needs a contiguous tensor")
    coeffs, keys = nonzero_terms(coeffs, keys)
    GAUSSIAN_ADD(tensor.device, tensor, coeffs, keys, scale, **({"first": first} if first else {}))
    return tensor


@torch.no_grad()
def low_rank_add_(weight: torch.Tensor, alpha: float, scale: float, rank: int, key_v: int, *,
                  key_u: int = None, left: torch.Tensor = None) -> torch.Tensor:
    """``weight = scale * weight + alpha * L V^T`` (LOZO). ``V`` (``n x rank``) is the stream ``key_v``;
    ``L`` is ``left`` (``m x rank``) if given, else ``U``, the stream ``key_u``."""
    if (key_u is None) == (left is None):
        raise ValueError("low_rank_add_ takes exactly one of key_u and left")
    LOW_RANK_ADD(weight.device, weight, alpha, scale, rank, key_v, key_u=key_u, left=left)
    return weight


@torch.no_grad()
def subspace_add_(weight: torch.Tensor, projection, coeffs, keys, scale: float = 1.0) -> torch.Tensor:
    """``weight = scale * weight + lift(sum_j coeffs[j] Z_j)`` (Lorenza's probes), ``Z_j`` the stream
    ``keys[j]`` shaped like the projected gradient; zero coefficients cost nothing. ``projection`` is
    a :class:`lorenza.projector.Projection`: the backends receive its folded view, basis and side.
    For a shard's projection whose ``Z`` starts inside the stream (``projection.noise_start``), the
    PyTorch loop runs, with the noise op's backend."""
    coeffs, keys = nonzero_terms(coeffs, keys)
    args = (weight.view(projection.folded), projection.basis, projection.side, projection.lift_scale, coeffs,
            keys, scale)
    first = projection.noise_start
    SUBSPACE_ADD(weight.device, *args, **({"first": first} if first else {}))
    return weight
