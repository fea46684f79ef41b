"""Op ``rsvd``: the randomized SVD of a matrix or a batch of same-shaped matrices (the compiled
``lorenza::rsvd`` when built, else the PyTorch reference)."""
import torch

from ..reference import rsvd as reference
from . import backend
from .keys import Stream, draw_seed, stream_key


def _compiled_rsvd(A, rank, oversample, power_iters, key, allow_tf32=False):
    from . import ext
    return ext.rsvd(A, rank, oversample, power_iters, key, allow_tf32)


RSVD = backend.declare("rsvd", torch=reference.rsvd, ext=_compiled_rsvd)


def check_rsvd_args(A, rank, oversample, power_iters) -> None:
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"rsvd: A must be a tensor, got {type(A).__name__}")
    if A.dim() not in (2, 3):
        raise ValueError(f"rsvd: A must be (m, n) or (b, m, n), got shape {tuple(A.shape)}")
    if not A.is_floating_point():
        raise TypeError(f"rsvd: A must be a floating-point tensor, got {A.dtype}")
    m, n = A.shape[-2:]
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(m, n):
        raise ValueError(f"rsvd: rank must be an int in [1, min(m, n)] = [1, {min(m, n)}], got {rank}")
    if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 0:
        raise ValueError(f"rsvd: oversample must be an int >= 0, got {oversample}")
    if isinstance(power_iters, bool) or not isinstance(power_iters, int) or power_iters < 0:
        raise ValueError(f"rsvd: power_iters must be an int >= 0, got {power_iters}")


def rsvd_key(seed: int) -> int:
    """The key of the sketch ``rsvd(..., seed=seed)`` draws."""
    return stream_key(seed, Stream.RSVD)


def rsvd(A: torch.Tensor, rank: int, oversample: int = 8, power_iters: int = 2, *,
         seed: int = None, generator: torch.Generator = None, allow_tf32: bool = False):
    """Rank-``rank`` truncated SVD ``A ~ U diag(S) Vh`` by a randomized range finder
    (docs/algorithms.md, section 6).

    ``A`` is ``(m, n)`` or a batch ``(b, m, n)`` of same-shaped matrices. The Gaussian test matrix
    has ``rank + oversample`` columns and is drawn from ``seed`` (a stream of
    :mod:`lorenza.random`), else from ``generator``, else from torch's default generator.
    ``power_iters`` subspace iterations sharpen the range for slowly decaying spectra.
    ``allow_tf32`` lets the CUDA kernel run its float32 GEMMs on TF32 tensor cores (faster, about
    three fewer significant digits); elsewhere it changes nothing.
    Returns ``U (..., m, rank)``, ``S (..., rank)``, ``Vh (..., rank, n)`` in float32 (float64 for a
    float64 input).
    """
    check_rsvd_args(A, rank, oversample, power_iters)
    if seed is not None and generator is not None:
        raise ValueError("rsvd: pass seed or generator, not both")
    key = rsvd_key(draw_seed(generator) if seed is None else seed)
    return RSVD(A.device, A, rank, oversample, power_iters, key, allow_tf32)
