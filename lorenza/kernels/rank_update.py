"""``W <- scale * W + alpha * (A @ B) + grad_coef * G`` in place, tile by tile: the one kernel behind
every low-rank write into a weight (GaLore's lift-and-update with its weight decay, Lorenza+'s
residual term, LOZO's ``U V^T``, Lorenza's ``lift(Z)`` probes).

``A`` (``rows x K``) and ``B`` (``K x cols``) are each either a tensor read with its strides, or
:class:`Noise`, generated in the kernel where it is used: nothing of size ``rows x cols`` is ever
formed, nor a generated ``rows x K`` factor written to memory. ``K`` (a rank) is summed with
``tl.dot`` from 16 up, and below 16 (generated factors) as one outer product per rank-one term in a
loop. Stream counts and ranks below 16 are runtime values, so one compiled kernel serves them all.
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import launch
from .rounding import round_to
from .philox import normal_at, stream_at

MAX_STREAMS = 4  # noise streams summed by one launch (keys are scalar arguments: no host copy)


@dataclass
class Noise:
    """The matrix ``X[i, k] = sum_j coeffs[j] * z_{keys[j]}[i * strides[0] + k * strides[1]]``."""

    keys: list
    coeffs: list
    shape: tuple
    strides: tuple


@triton.jit
def _noise(rows, cols, s0, s1, mask, k0, k1, k2, k3, c0, c1, c2, c3, streams, COMPUTE: tl.constexpr):
    """``sum_j c_j z_j`` over the first ``streams`` streams at stream indices ``rows * s0 + cols * s1``
    (``rows``, ``cols`` broadcast), 0 where ``mask`` is off; each normal is widened to COMPUTE
    before it is scaled, and the terms are added in stream order."""
    index = rows.to(tl.int64) * s0 + cols.to(tl.int64) * s1
    tile = c0 * normal_at(k0, index).to(COMPUTE)
    for j in range(1, streams):
        key, coeff = stream_at(j, k0, k1, k2, k3, c0, c1, c2, c3)
        tile += coeff * normal_at(key, index).to(COMPUTE)
    return tl.where(mask, tile, 0.0)


@triton.jit
def _operand(ptr, rows, cols, s0, s1, mask, k0, k1, k2, k3, c0, c1, c2, c3, streams, NOISE: tl.constexpr,
             COMPUTE: tl.constexpr):
    """A block of a factor (``rows``, ``cols`` broadcast): noise of ``streams`` streams, or loaded."""
    if NOISE:
        return _noise(rows, cols, s0, s1, mask, k0, k1, k2, k3, c0, c1, c2, c3, streams, COMPUTE)
    else:
        offsets = rows.to(tl.int64) * s0 + cols.to(tl.int64) * s1
        return tl.load(ptr + offsets, mask=mask, other=0.0).to(COMPUTE)


# Keys, stream count and rank are plain runtime values: one compiled kernel serves every rank of a
# path (a rank of 1 would otherwise compile a variant of its own)
@triton.jit(do_not_specialize=["K", "a_k0", "a_k1", "a_k2", "a_k3", "a_streams", "b_k0"])
def _rank_update_kernel(w_ptr, n_rows, n_cols, sw0, sw1, K,
                        a_ptr, sa0, sa1, a_k0, a_k1, a_k2, a_k3,
                        a_c0: tl.float64, a_c1: tl.float64, a_c2: tl.float64, a_c3: tl.float64, a_streams,
                        b_ptr, sb0, sb1, b_k0,
                        g_ptr, sg0, sg1, scale: tl.float64, alpha: tl.float64, grad_coef: tl.float64,
                        A_NOISE: tl.constexpr, B_NOISE: tl.constexpr, HAS_GRAD: tl.constexpr,
                        COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # scalars arrive as doubles and are rounded once to the arithmetic's precision, as in PyTorch
    c0, c1 = tl.cast(a_c0, COMPUTE), tl.cast(a_c1, COMPUTE)
    c2, c3 = tl.cast(a_c2, COMPUTE), tl.cast(a_c3, COMPUTE)
    one = tl.cast(1.0, COMPUTE)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < n_rows, cols < n_cols
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=COMPUTE)
    if BLOCK_K == 1:  # a rank below 16: one outer product per rank-one term, no padding, few registers
        for term in range(0, K):
            k = tl.zeros((1,), tl.int64) + term  # an index block, broadcast against rows and cols
            a = _operand(a_ptr, rows, k, sa0, sa1, row_ok, a_k0, a_k1, a_k2, a_k3, c0, c1, c2, c3, a_streams,
                         A_NOISE, COMPUTE)
            b = _operand(b_ptr, k, cols, sb0, sb1, col_ok, b_k0, b_k0, b_k0, b_k0, one, one, one, one, 1,
                         B_NOISE, COMPUTE)
            acc += a[:, None] * b[None, :]
    else:
        for k_start in range(0, K, BLOCK_K):
            ks = k_start + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            a = _operand(a_ptr, rows[:, None], ks[None, :], sa0, sa1, row_ok[:, None] & k_ok[None, :],
                         a_k0, a_k1, a_k2, a_k3, c0, c1, c2, c3, a_streams, A_NOISE, COMPUTE)
            b = _operand(b_ptr, ks[:, None], cols[None, :], sb0, sb1, k_ok[:, None] & col_ok[None, :],
                         b_k0, b_k0, b_k0, b_k0, one, one, one, one, 1, B_NOISE, COMPUTE)
            acc += tl.dot(a, b, input_precision=PRECISION, out_dtype=COMPUTE)
    mask = row_ok[:, None] & col_ok[None, :]
    w_ptrs = w_ptr + rows[:, None] * sw0 + cols[None, :] * sw1
    w = tl.load(w_ptrs, mask=mask).to(COMPUTE)
    w = w * tl.cast(scale, COMPUTE) + acc * tl.cast(alpha, COMPUTE)
    if HAS_GRAD:
        g = tl.load(g_ptr + rows[:, None] * sg0 + cols[None, :] * sg1, mask=mask).to(COMPUTE)
        w += g * tl.cast(grad_coef, COMPUTE)
    tl.store(w_ptrs, round_to(w, w_ptr.dtype.element_ty), mask=mask)


def padded_streams(keys, coeffs, limit: int = MAX_STREAMS):
    """``limit`` keys and float coefficients for a launch's scalar arguments: the unused slots
    repeat the first key with coefficient 0 (and are beyond the kernels' runtime stream count)."""
    keys, coeffs = list(keys), [float(c) for c in coeffs]
    if not 1 <= len(keys) <= limit:
        raise ValueError(f"a launch sums 1 to {limit} noise streams, got {len(keys)}")
    pad = limit - len(keys)
    return keys + [keys[0]] * pad, coeffs + [0.0] * pad


def rank_update_(W: torch.Tensor, A, B, *, alpha: float = 1.0, scale: float = 1.0,
                 grad: torch.Tensor = None, grad_coef: float = 0.0) -> torch.Tensor:
    """``W = scale * W + alpha * (A @ B) + grad_coef * grad``, in place; ``A`` and ``B`` are tensors or
    :class:`Noise` (``B`` with one stream). Noise with more than 4 streams takes several launches.
    A generated ``B`` beside a loaded ``A`` works but is the costlier layout (registers): callers
    transpose to put the generated factor first."""
    if isinstance(A, Noise) and len(A.keys) > MAX_STREAMS:
        head = Noise(A.keys[:MAX_STREAMS], A.coeffs[:MAX_STREAMS], A.shape, A.strides)
        tail = Noise(A.keys[MAX_STREAMS:], A.coeffs[MAX_STREAMS:], A.shape, A.strides)
        rank_update_(W, head, B, alpha=alpha, scale=scale, grad=grad, grad_coef=grad_coef)
        return rank_update_(W, tail, B, alpha=alpha)
    rows, cols = W.shape
    K = A.shape[1]
    if tuple(A.shape) != (rows, K) or tuple(B.shape) != (K, cols):
        raise ValueError(f"rank_update_: {tuple(A.shape)} @ {tuple(B.shape)} does not fit a {rows} x {cols} "
                         "weight")
    launch.check_dtype(W, *[t for t in (A, B, grad) if isinstance(t, torch.Tensor)])
    a_noise, b_noise = isinstance(A, Noise), isinstance(B, Noise)
    a_keys, a_coeffs = padded_streams(A.keys, A.coeffs) if a_noise else ([0] * 4, [0.0] * 4)
    b_key = padded_streams(B.keys, B.coeffs, 1)[0][0] if b_noise else 0
    block_m, block_n = launch.tile(rows, cols)
    if a_noise or b_noise:  # generated factors: rank-one terms below 16, else the smallest dot (registers)
        block_k = 1 if K < 16 else 16
    else:
        block_k = launch.inner_block(K)
    # the rank-one loop holds the accumulator and a few normals: 4 warps within 128 registers each
    # (left to itself, ptxas packs it into 48-96 and spills); a dot's operands need 8 warps on a
    # 64 x 64 tile
    if block_k == 1:
        options = dict(num_warps=4, **launch.register_budget(128))
    else:
        options = dict(num_warps=launch.tile_warps(block_m, block_n))
    compute = launch.compute_dtype(W.dtype)
    g = grad if grad is not None else W
    grid = (triton.cdiv(rows, block_m), triton.cdiv(cols, block_n))
    _rank_update_kernel[grid](
        W, rows, cols, W.stride(0), W.stride(1), K,
        W if a_noise else A, *(A.strides if a_noise else A.stride()), *a_keys, *a_coeffs,
        len(A.keys) if a_noise else 0,
        W if b_noise else B, *(B.strides if b_noise else B.stride()), b_key,
        g, g.stride(0), g.stride(1), float(scale), float(alpha), float(grad_coef),
        A_NOISE=a_noise, B_NOISE=b_noise, HAS_GRAD=grad is not None,
        COMPUTE=compute, PRECISION="ieee" if compute == tl.float64 else launch.dot_precision(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, **options)
    return W
