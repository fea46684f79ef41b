"""Linear algebra: the randomized SVD (the op layer's ``rsvd``: the compiled ``lorenza::rsvd`` when
built, else the PyTorch reference)."""
from .ops.linalg import rsvd, rsvd_key

__all__ = ["rsvd", "rsvd_key"]
