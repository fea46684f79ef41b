"""The Adam steps of ``projected_adam.py`` with both moments in blockwise 8-bit codes
(docs/algorithms.md, section 9). A program takes whole blocks of ``BLOCK`` (256) elements of the
flattened moments as a ``(blocks, 256)`` tile: it dequantizes them from their codes and block
maxima, updates them, and quantizes them back with the maxima of the updated values, so no float
copy of a moment exists in memory.

- projected: the projection kernel writes ``R`` (``r``-sized, as ``N`` is in the float32 step; a
  GEMM's output tile does not hold whole blocks of the flattened moment, so quantizing needs this
  second, elementwise kernel), the 8-bit Adam kernel writes ``N`` over it, and
  ``projected_adam.lift_step_`` lifts it into the weight;
- unprojected: one launch over many tensors, as ``projected_adam.adam_``.

A value's code is the nearest map value's: a binary search over the map's 255 midpoints (8 probes
of a 4 KiB table), the same float32 comparisons as the reference's ``bucketize``.
"""
import functools

import torch
import triton
import triton.language as tl

from ..reference import blockwise8
from ..reference.precision import compute_dtype
from . import launch
from .projected_adam import TABLES, adam_moments, betas, lift_step_, project
from .rounding import round_to

BLOCK = blockwise8.BLOCK
# offsets in the maps table: the signed map's values and midpoints, then the unsigned map's
SIGNED_VALUES, SIGNED_MIDS = tl.constexpr(0), tl.constexpr(256)
UNSIGNED_VALUES, UNSIGNED_MIDS = tl.constexpr(511), tl.constexpr(767)


@functools.lru_cache(maxsize=None)
def _maps(device: str) -> torch.Tensor:
    parts = []
    for signed in (True, False):
        values = blockwise8.dynamic_map(signed)
        parts += [values, (values[1:] + values[:-1]) / 2]  # the reference's midpoints, as it rounds them
    return torch.cat(parts).to(device)


@triton.jit
def _dequantize(codes_ptr, absmax_ptr, offs, mask, blocks, block_ok, values_ptr, COMPUTE: tl.constexpr):
    codes = tl.load(codes_ptr + offs, mask=mask, other=0).to(tl.int32)
    peak = tl.load(absmax_ptr + blocks, mask=block_ok, other=0.0)
    return tl.load(values_ptr + codes).to(COMPUTE) * peak.to(COMPUTE)[:, None]


@triton.jit
def _quantize_store(values, codes_ptr, absmax_ptr, offs, mask, blocks, block_ok, mids_ptr):
    x = tl.where(mask, values.to(tl.float32), 0.0)  # the padding of the last block counts as 0
    peak = tl.max(tl.abs(x), axis=1)
    tl.store(absmax_ptr + blocks, peak, mask=block_ok)
    scaled = tl.div_rn(x, tl.where(peak > 0, peak, 1.0)[:, None])
    code = tl.zeros(x.shape, dtype=tl.int32)
    for i in tl.static_range(8):  # code = how many midpoints lie below the value
        step = 128 >> i
        code = tl.where(tl.load(mids_ptr + code + (step - 1)) < scaled, code + step, code)
    tl.store(codes_ptr + offs, code.to(tl.uint8), mask=mask)


@triton.jit
def _adam8(r, mc_ptr, ma_ptr, vc_ptr, va_ptr, maps_ptr, offs, mask, blocks, block_ok, beta1, one_minus_beta1,
           beta2, one_minus_beta2, eps, COMPUTE: tl.constexpr):
    """The updated moments of a tile stored back in 8 bits; returns ``N``."""
    m = _dequantize(mc_ptr, ma_ptr, offs, mask, blocks, block_ok, maps_ptr + SIGNED_VALUES, COMPUTE)
    v = _dequantize(vc_ptr, va_ptr, offs, mask, blocks, block_ok, maps_ptr + UNSIGNED_VALUES, COMPUTE)
    m, v, n = adam_moments(r, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, COMPUTE)
    _quantize_store(m, mc_ptr, ma_ptr, offs, mask, blocks, block_ok, maps_ptr + SIGNED_MIDS)
    _quantize_store(v, vc_ptr, va_ptr, offs, mask, blocks, block_ok, maps_ptr + UNSIGNED_MIDS)
    return n


@triton.jit
def _tile(first_block, numel, BLOCKS: tl.constexpr):
    blocks = first_block + tl.arange(0, BLOCKS)
    offs = blocks[:, None] * 256 + tl.arange(0, 256)[None, :]
    return blocks, offs, offs < numel, blocks * 256 < numel


@triton.jit
def _subspace_adam8_kernel(r_ptr, n_ptr, mc_ptr, ma_ptr, vc_ptr, va_ptr, maps_ptr, numel,
                           beta1: tl.float64, one_minus_beta1: tl.float64, beta2: tl.float64,
                           one_minus_beta2: tl.float64, eps: tl.float64, COMPUTE: tl.constexpr,
                           BLOCKS: tl.constexpr):
    blocks, offs, mask, block_ok = _tile(tl.program_id(0).to(tl.int64) * BLOCKS, numel, BLOCKS)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    n = _adam8(r, mc_ptr, ma_ptr, vc_ptr, va_ptr, maps_ptr, offs, mask, blocks, block_ok, beta1,
               one_minus_beta1, beta2, one_minus_beta2, eps, COMPUTE)
    tl.store(n_ptr + offs, n, mask=mask)  # n_ptr may be r_ptr: each element is read before


def _blocks_per_program(numel: int) -> int:
    return max(1, launch.elementwise_block(numel) // BLOCK)


def _check_moments(shape, m_codes, m_absmax, v_codes, v_absmax) -> None:
    for codes, absmax in ((m_codes, m_absmax), (v_codes, v_absmax)):
        if codes.dtype != torch.uint8 or absmax.dtype != torch.float32 or not codes.is_contiguous() \
                or tuple(codes.shape) != tuple(shape) or absmax.numel() != blockwise8.blocks(codes.numel()):
            raise ValueError(f"the 8-bit Adam kernels take contiguous uint8 codes of shape {tuple(shape)} "
                             f"and one float32 maximum per {BLOCK} of them")


def projected_adam8_(W, G, m_codes, m_absmax, v_codes, v_absmax, basis, side, lift_scale, *, scale, residual,
                     beta1, beta2, eps, step_size, decay, projected=False) -> None:
    """``projected_adam.projected_adam_`` with 8-bit moments (see the module docstring)."""
    launch.check_dtype(W, G)
    shape, dtype = m_codes.shape, compute_dtype(W.dtype)
    _check_moments(shape, m_codes, m_absmax, v_codes, v_absmax)
    if projected:
        if residual:
            raise ValueError("the residual needs the full gradient, not its projection")
        if not G.is_contiguous() or G.shape != shape:
            raise ValueError("the 8-bit subspace Adam kernel needs a contiguous gradient shaped like the "
                             "moments")
        R, N = G, torch.empty(shape, dtype=dtype, device=W.device)
    else:
        R = project(G, basis, side, shape, dtype)
        N = torch.empty_like(R) if residual else R
    blocks = _blocks_per_program(R.numel())
    _subspace_adam8_kernel[(triton.cdiv(R.numel(), blocks * BLOCK),)](
        R, N, m_codes, m_absmax, v_codes, v_absmax, _maps(str(W.device)), R.numel(),
        *betas(beta1, beta2), float(eps), COMPUTE=launch.compute_dtype(W.dtype), BLOCKS=blocks)
    lift_step_(W, G, N, R, basis, side, lift_scale, scale=scale, residual=residual, step_size=step_size,
               decay=decay)


@triton.jit
def _multi_adam8_kernel(table_ptr, blocks_ptr, maps_ptr, beta1: tl.float64, one_minus_beta1: tl.float64,
                        beta2: tl.float64, one_minus_beta2: tl.float64, eps: tl.float64,
                        step_size: tl.float64, step_size_ptr, keep: tl.float64, P_DTYPE: tl.constexpr,
                        G_DTYPE: tl.constexpr, COMPUTE: tl.constexpr, STEP_SIZE_IN_MEMORY: tl.constexpr,
                        BLOCKS: tl.constexpr):
    pid = tl.program_id(0)
    tensor = tl.load(blocks_ptr + 2 * pid)
    row = table_ptr + 7 * tensor  # (param, grad, m codes, m absmax, v codes, v absmax) addresses, numel
    p_ptr = tl.load(row).to(tl.pointer_type(P_DTYPE))
    g_ptr = tl.load(row + 1).to(tl.pointer_type(G_DTYPE))
    mc_ptr = tl.load(row + 2).to(tl.pointer_type(tl.uint8))
    ma_ptr = tl.load(row + 3).to(tl.pointer_type(tl.float32))
    vc_ptr = tl.load(row + 4).to(tl.pointer_type(tl.uint8))
    va_ptr = tl.load(row + 5).to(tl.pointer_type(tl.float32))
    blocks, offs, mask, block_ok = _tile(tl.load(blocks_ptr + 2 * pid + 1) // 256, tl.load(row + 6), BLOCKS)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    n = _adam8(g, mc_ptr, ma_ptr, vc_ptr, va_ptr, maps_ptr, offs, mask, blocks, block_ok, beta1,
               one_minus_beta1, beta2, one_minus_beta2, eps, COMPUTE)
    if STEP_SIZE_IN_MEMORY:  # a traced step's, a float64 tensor on the device: read there, no host sync
        step = tl.load(step_size_ptr).to(COMPUTE)
    else:
        step = tl.cast(step_size, COMPUTE)
    p = tl.load(p_ptr + offs, mask=mask).to(COMPUTE)
    p = (p - step * n) * tl.cast(keep, COMPUTE)
    tl.store(p_ptr + offs, round_to(p, P_DTYPE), mask=mask)


def adam8_(params, grads, m_codes, m_absmax, v_codes, v_absmax, *, beta1, beta2, eps, step_size,
           decay) -> None:
    """``projected_adam.adam_`` with 8-bit moments: one launch per (device, dtypes). Every tensor is
    indexed flat: each contiguous, its gradient and codes of its shape."""
    members = list(zip(params, grads, m_codes, m_absmax, v_codes, v_absmax))
    for p, g, mc, ma, vc, va in members:  # every check before the first write
        launch.check_dtype(p, g)
        _check_moments(p.shape, mc, ma, vc, va)
        if not (p.is_contiguous() and g.is_contiguous() and g.shape == p.shape) \
                or len({t.device for t in (p, g, mc, ma, vc, va)}) != 1:
            raise ValueError("adam8_: the multi-tensor kernel takes contiguous tensors on one device, each "
                             "gradient shaped like its parameter")
    groups = {}
    for member in members:
        if member[0].numel():
            groups.setdefault((member[0].device, member[0].dtype, member[1].dtype), []).append(member)
    for (device, p_dtype, g_dtype), group in groups.items():
        blocks = _blocks_per_program(max(member[0].numel() for member in group))
        table, block_map = TABLES.get(group, blocks * BLOCK, device)
        in_memory = isinstance(step_size, torch.Tensor)
        _multi_adam8_kernel[(block_map.shape[0],)](
            table, block_map, _maps(str(device)), *betas(beta1, beta2), float(eps),
            0.0 if in_memory else float(step_size),
            step_size.to(device, torch.float64) if in_memory else table,
            1.0 - decay, P_DTYPE=launch.TL_DTYPES[p_dtype], G_DTYPE=launch.TL_DTYPES[g_dtype],
            COMPUTE=launch.compute_dtype(p_dtype), STEP_SIZE_IN_MEMORY=in_memory, BLOCKS=blocks)


# -- the kernels as registered ops, which a traced step (torch.compile) calls as one op each, as
# projected_adam.py's (see there) ----------------------------------------------------------------

@torch.library.custom_op("lorenza::triton_projected_adam8_",
                         mutates_args=("W", "m_codes", "m_absmax", "v_codes", "v_absmax"))
def registered_projected_adam8_(W: torch.Tensor, G: torch.Tensor, m_codes: torch.Tensor,
                                m_absmax: torch.Tensor, v_codes: torch.Tensor, v_absmax: torch.Tensor,
                                basis: torch.Tensor, side: str,
                                lift_scale: float, scale: float, beta1: float, beta2: float, eps: float,
                                step_size: torch.Tensor, decay: float, projected: bool) -> None:
    projected_adam8_(W, G, m_codes, m_absmax, v_codes, v_absmax, basis, side, lift_scale, scale=scale,
                     residual=False, beta1=beta1, beta2=beta2, eps=eps, step_size=step_size, decay=decay,
                     projected=projected)


@registered_projected_adam8_.register_fake
def _(W, G, m_codes, m_absmax, v_codes, v_absmax, basis, side, lift_scale, scale, beta1, beta2, eps,
      step_size, decay, projected) -> None:
    return None


@torch.library.custom_op("lorenza::triton_adam8_", mutates_args=("params", "m_codes", "m_absmax", "v_codes",
                                                                 "v_absmax"))
def registered_adam8_(params: list[torch.Tensor], grads: list[torch.Tensor], m_codes: list[torch.Tensor],
                      m_absmax: list[torch.Tensor], v_codes: list[torch.Tensor], v_absmax: list[torch.Tensor],
                      beta1: float, beta2: float, eps: float, step_size: torch.Tensor, decay: float) -> None:
    adam8_(params, grads, m_codes, m_absmax, v_codes, v_absmax, beta1=beta1, beta2=beta2, eps=eps,
           step_size=step_size, decay=decay)


@registered_adam8_.register_fake
def _(params, grads, m_codes, m_absmax, v_codes, v_absmax, beta1, beta2, eps, step_size, decay) -> None:
    return None
