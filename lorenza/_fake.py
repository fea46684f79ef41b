"""Fake (meta) kernels for the ops ``lorenza._C`` defines, so they trace under torch.compile."""
import torch

from .reference.rsvd import compute_dtype


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
