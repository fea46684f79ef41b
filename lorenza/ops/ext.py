"""The compiled backend, ``lorenza._C``, as the op table calls it: the randomized SVD and the Philox
noise. Imported only once ``lorenza._C`` has loaded; it also registers the fake (meta) kernels of
the compiled ops, so that they trace under torch.compile.
"""
import torch

from ..reference.precision import compute_dtype


def normal_(out: torch.Tensor, key: int, start: int = 0) -> torch.Tensor:
    torch.ops.lorenza.philox_normal_(out, key, start)
    return out


def rsvd(A, rank, oversample, power_iters, key, allow_tf32=False):
    return torch.ops.lorenza.rsvd(A, rank, oversample, power_iters, key, allow_tf32)


@torch.library.register_fake("lorenza::rsvd")
def _rsvd_fake(A, rank, oversample, power_iters, key, allow_tf32=False):
    dtype = compute_dtype(A.dtype)
    *batch, m, n = A.shape
    return (
        A.new_empty((*batch, m, rank), dtype=dtype),
        A.new_empty((*batch, rank), dtype=dtype),
        A.new_empty((*batch, rank, n), dtype=dtype),
    )


@torch.library.register_fake("lorenza::philox_normal_")
def _philox_normal_fake(out, key, start):
    return None
