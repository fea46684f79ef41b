"""A linear map whose weight is a tensor train: AdaZeta's (and LoRETTA's) TT layer.

The ``in x out`` weight is viewed as a tensor of order ``2 * order`` with modes
``(i_1 .. i_order, o_1 .. o_order)`` (``in = prod i_k``, ``out = prod o_k``, row-major) and stored as
a train of cores ``G_k`` of shape ``(r_{k-1}, n_k, r_k)``, ``r_0 = r_{2 order} = 1``:
``W[i, o] = G_1[:, i_1, :] ... G_order[:, i_order, :] G_{order+1}[:, o_1, :] ... G_{2 order}[:, o_order, :]``.
As in the official code the input modes come first. The forward contracts the input with one
core at a time and never forms ``W``.
"""
import math

import torch
from torch import nn


def factorize(n: int, order: int) -> list:
    """``n`` as a product of ``order`` integers as equal as possible, largest first (1s when ``n``
    has fewer prime factors): 4096 -> [16, 16, 16], 64 -> [4, 4, 4], 384 -> [8, 8, 6]."""
    if n < 1 or order < 1:
        raise ValueError(f"factorize needs n >= 1 and order >= 1, got n={n}, order={order}")
    primes, rest, p = [], n, 2
    while p * p <= rest:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    if rest > 1:
        primes.append(rest)
    factors = [1] * order
    for prime in sorted(primes, reverse=True):  # largest prime into the smallest factor so far
        factors[factors.index(min(factors))] *= prime
    return sorted(factors, reverse=True)


def train_ranks(modes, rank: int) -> list:
    """``[1, r_1, .., r_{d-1}, 1]``: ``rank``, capped by what the modes on each side can carry."""
    ranks = [1]
    for k in range(1, len(modes)):
        ranks.append(min(rank, math.prod(modes[:k]), math.prod(modes[k:])))
    return ranks + [1]


class TTLinear(nn.Module):
    """``y = x W + b`` with ``W`` (``in_features x out_features``) a tensor train of rank ``tt_rank``.

    ``order`` is the number of modes each dimension is split into (:func:`factorize`). The cores
    start Gaussian with ``W``'s entries of standard deviation ``sqrt(1 / (in + out))``, as in the
    official code; ``zero_last_core=True`` starts ``W`` at zero instead (the up-projection of an
    adapter that starts as the identity).
    """

    def __init__(self, in_features: int, out_features: int, tt_rank: int = 5, order: int = 3,
                 bias: bool = True, zero_last_core: bool = False, device=None, dtype=None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features),
                            ("tt_rank", tt_rank), ("order", order)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TTLinear: {name} must be an int >= 1, got {value!r}")
        self.in_features, self.out_features, self.order = in_features, out_features, order
        self.in_modes, self.out_modes = factorize(in_features, order), factorize(out_features, order)
        modes = self.in_modes + self.out_modes
        self.ranks = train_ranks(modes, tt_rank)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(self.ranks[k], n, self.ranks[k + 1], device=device, dtype=dtype))
            for k, n in enumerate(modes))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.zero_last_core = zero_last_core
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Each core's entries have variance target^(2/d) / r_k, so the sum over the r_1 .. r_{d-1}
        # rank paths gives W entries of variance target^2 = 1 / (in + out).
        per_core = (1.0 / (self.in_features + self.out_features)) ** (1.0 / len(self.cores))
        for core, right_rank in zip(self.cores, self.ranks[1:]):
            core.normal_(0.0, math.sqrt(per_core / right_rank))
        if self.zero_last_core:
            self.cores[-1].zero_()
        if self.bias is not None:
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"TTLinear: expected input with last dimension {self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        state = x.reshape(-1, 1, self.in_features)  # (batch, r_0, remaining input modes)
        for core in self.cores[:self.order]:  # contract i_k and r_{k-1}: (batch, r_k, rest)
            batch, rank, rest = state.shape
            mode = core.shape[1]
            state = torch.einsum("bkr,kq->bqr", state.reshape(batch, rank * mode, rest // mode),
                                 core.reshape(rank * mode, -1))
        out = state.reshape(state.shape[0], -1)  # (batch, r_order)
        for core in self.cores[self.order:]:  # expand o_k: (batch * o_1 .. o_k, r_k)
            out = out.reshape(-1, core.shape[0]) @ core.reshape(core.shape[0], -1)
        out = out.reshape(*lead, self.out_features)
        return out if self.bias is None else out + self.bias

    def to_dense(self) -> torch.Tensor:
        """The ``in_features x out_features`` matrix ``W`` (for tests and inspection)."""
        full = self.cores[0].reshape(-1, self.ranks[1])
        for core in self.cores[1:]:
            full = (full @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[2])
        return full.reshape(self.in_features, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"modes={self.in_modes}x{self.out_modes}, ranks={self.ranks}, bias={self.bias is not None}")
