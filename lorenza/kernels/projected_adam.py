"""GaLore's Adam step (docs/algorithms.md, section 1) in three kernels:

- project + Adam: ``R = P^T G`` or ``G P^T`` by a GEMM whose epilogue updates the moments in place
  and writes the normalised step ``N = M / (sqrt(V) + eps)`` (``r``-sized, like the moments); an
  elementwise kernel does the same from an ``R`` projected already (per-layer mode);
- lift + update: ``W = (1 - decay) (W - step * scale * lift(N))`` through ``rank_update_``, written
  into ``W`` tile by tile, so the step has no ``m x n`` temporary;
- the unprojected Adam of many tensors in one launch: a table of their addresses, one program per
  block of one tensor.

Scalars that change every step (step size, decay) are runtime arguments (a traced step's step size
is a device tensor the kernels read, through the registered ops at the end); arithmetic is fp32
(fp64 for fp64 weights) and the moments are fp32 for bf16/fp16 weights.
"""
from collections import OrderedDict, defaultdict

import torch
import triton
import triton.language as tl

from ..reference.precision import compute_dtype
from . import launch
from .rounding import round_to
from .rank_update import rank_update_


@triton.jit
def adam_moments(r, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, COMPUTE: tl.constexpr):
    """The moments and ``N = M / (sqrt(V) + eps)``; the scalars arrive as doubles (host-computed
    ``1 - beta``) and are rounded once, and fp32 takes the IEEE-rounded sqrt and division, as PyTorch."""
    m = tl.cast(beta1, COMPUTE) * m + tl.cast(one_minus_beta1, COMPUTE) * r
    v = tl.cast(beta2, COMPUTE) * v + tl.cast(one_minus_beta2, COMPUTE) * r * r
    if COMPUTE == tl.float32:
        n = tl.div_rn(m, tl.sqrt_rn(v) + tl.cast(eps, COMPUTE))
    else:
        n = m / (tl.sqrt(v) + tl.cast(eps, COMPUTE))
    return m, v, n


@triton.jit
def _project_adam_kernel(a_ptr, sa0, sa1, b_ptr, sb0, sb1, m_ptr, v_ptr, n_ptr, r_ptr, n_rows, n_cols, K,
                         beta1: tl.float64, one_minus_beta1: tl.float64, beta2: tl.float64,
                         one_minus_beta2: tl.float64, eps: tl.float64, STORE_R: tl.constexpr,
                         ADAM: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < n_rows, cols < n_cols
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=COMPUTE)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_ptr + rows[:, None] * sa0 + ks[None, :] * sa1, mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0).to(COMPUTE)
        b = tl.load(b_ptr + ks[:, None] * sb0 + cols[None, :] * sb1, mask=k_ok[:, None] & col_ok[None, :],
                    other=0.0).to(COMPUTE)
        acc += tl.dot(a, b, input_precision=PRECISION, out_dtype=COMPUTE)
    mask = row_ok[:, None] & col_ok[None, :]
    offs = rows[:, None] * n_cols + cols[None, :]  # moments, N and R are contiguous
    if ADAM:
        m, v, n = adam_moments(acc, tl.load(m_ptr + offs, mask=mask).to(COMPUTE),
                                tl.load(v_ptr + offs, mask=mask).to(COMPUTE), beta1, one_minus_beta1, beta2,
                                one_minus_beta2, eps, COMPUTE)
        tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)  # bfloat16 at state_bits=16
        tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
        tl.store(n_ptr + offs, n, mask=mask)
    if STORE_R:
        tl.store(r_ptr + offs, acc, mask=mask)


def betas(beta1, beta2) -> tuple:
    """``beta1, 1 - beta1, beta2, 1 - beta2`` in double precision (the kernels round them once)."""
    return float(beta1), 1.0 - float(beta1), float(beta2), 1.0 - float(beta2)


def _project_adam(G, M, V, basis, side, beta1, beta2, eps, store_R: bool, dtype):
    """``N`` (and ``R`` when asked) in ``dtype`` (the arithmetic's), with ``M, V`` updated in place
    (stored in their own dtype: bfloat16 at ``state_bits=16``)."""
    if not (M.is_contiguous() and V.is_contiguous()):
        raise ValueError("the projected Adam kernel needs contiguous moments")
    N = torch.empty(M.shape, dtype=dtype, device=M.device)
    R = torch.empty_like(N) if store_R else N
    _launch_projection(G, basis, side, M, V, N, R, betas=betas(beta1, beta2), eps=eps, store_R=store_R)
    return N, (R if store_R else None)


def project(G, basis, side, shape, dtype):
    """``R``, the projection of ``G`` (``shape``, the subspace's, in ``dtype``), alone: the first
    stage of the 8-bit step (``adam8.py``)."""
    R = torch.empty(shape, dtype=dtype, device=G.device)
    _launch_projection(G, basis, side, R, R, R, R, betas=betas(0.0, 0.0), eps=0.0, store_R=True, adam=False)
    return R


def _launch_projection(G, basis, side, M, V, N, R, *, betas, eps, store_R, adam=True):
    if side == "right":  # R = G P^T: G (rows x K), P^T (K x r)
        A, B = G, basis.T
    else:  # R = P^T G: P^T (r x K), G (K x cols)
        A, B = basis.T, G
    rows, cols = M.shape
    block_m, block_n = launch.tile(rows, cols)
    compute = launch.compute_dtype(N.dtype)
    _project_adam_kernel[(triton.cdiv(rows, block_m), triton.cdiv(cols, block_n))](
        A, A.stride(0), A.stride(1), B, B.stride(0), B.stride(1), M, V, N, R, rows, cols, A.shape[1],
        *betas, float(eps), STORE_R=store_R, ADAM=adam, COMPUTE=compute,
        PRECISION="ieee" if compute == tl.float64 else launch.dot_precision(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=launch.inner_block(A.shape[1]),
        num_warps=launch.tile_warps(block_m, block_n))


@triton.jit
def _subspace_adam_kernel(r_ptr, m_ptr, v_ptr, n_ptr, numel, beta1: tl.float64, one_minus_beta1: tl.float64,
                          beta2: tl.float64, one_minus_beta2: tl.float64, eps: tl.float64,
                          COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    r = tl.load(r_ptr + offs, mask=mask).to(COMPUTE)
    m, v, n = adam_moments(r, tl.load(m_ptr + offs, mask=mask).to(COMPUTE),
                            tl.load(v_ptr + offs, mask=mask).to(COMPUTE), beta1, one_minus_beta1, beta2,
                            one_minus_beta2, eps, COMPUTE)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
    tl.store(n_ptr + offs, n, mask=mask)


def _subspace_adam(R, M, V, beta1, beta2, eps, dtype):
    """``N`` (in ``dtype``) from an already projected gradient ``R`` (per-layer mode), ``M, V``
    updated in place."""
    if not all(t.is_contiguous() for t in (R, M, V)) or R.shape != M.shape:
        raise ValueError("the subspace Adam kernel needs contiguous moments and a gradient of their shape")
    N = torch.empty(M.shape, dtype=dtype, device=M.device)
    block = launch.elementwise_block(M.numel())
    _subspace_adam_kernel[(triton.cdiv(M.numel(), block),)](
        R, M, V, N, M.numel(), *betas(beta1, beta2), float(eps), COMPUTE=launch.TL_DTYPES[dtype], BLOCK=block)
    return N


def projected_adam_(W, G, M, V, basis, side, lift_scale, *, scale, residual, beta1, beta2, eps, step_size,
                    decay, projected=False):
    """The reference's ``projected_adam_`` (same arguments: ``W`` and ``G`` are the folded views, or
    ``G`` the subspace gradient when ``projected``) with no ``m x n`` temporary (see the module
    docstring)."""
    launch.check_dtype(W, G, M)
    if projected:
        if residual:
            raise ValueError("the residual needs the full gradient, not its projection")
        N, R = _subspace_adam(G, M, V, beta1, beta2, eps, compute_dtype(W.dtype)), None
    else:
        N, R = _project_adam(G, M, V, basis, side, beta1, beta2, eps, residual, compute_dtype(W.dtype))
    lift_step_(W, G, N, R, basis, side, lift_scale, scale=scale, residual=residual, step_size=step_size,
               decay=decay)


def lift_step_(W, G, N, R, basis, side, lift_scale, *, scale, residual, step_size, decay) -> None:
    """``W = (1 - decay) (W - step * scale * lift(N))`` in place, with Lorenza+'s residual term
    (which needs ``R`` and ``G``) when asked; ``N`` may be overwritten. A tensor ``step_size`` (a
    traced step's) scales ``N`` on the device, and the lift takes the rest as a number."""
    alpha, keep = step_size * scale, 1.0 - decay
    if isinstance(alpha, torch.Tensor):
        if residual:
            raise ValueError("lift_step_: the residual takes its step size as a number")
        N, alpha = N.mul_(alpha), 1.0
    grad_coef = 0.0
    if residual:  # W -= alpha (lift(N) + phi (G - lift(R))) = alpha (lift(N - phi R) + phi G)
        r_norm = R.norm()
        phi = float(N.norm() / r_norm) if r_norm > 0 else 0.0
        N = N.sub_(R, alpha=phi)
        grad_coef = -alpha * phi * keep
    lifted = (N, basis) if side == "right" else (basis, N)
    rank_update_(W, *lifted, alpha=-alpha * keep * lift_scale, scale=keep,
                 grad=G if residual else None, grad_coef=grad_coef)


@triton.jit
def _multi_adam_kernel(table_ptr, blocks_ptr, beta1: tl.float64, one_minus_beta1: tl.float64,
                       beta2: tl.float64, one_minus_beta2: tl.float64, eps: tl.float64, step_size: tl.float64,
                       step_size_ptr, keep: tl.float64, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                       M_DTYPE: tl.constexpr, COMPUTE: tl.constexpr, STEP_SIZE_IN_MEMORY: tl.constexpr,
                       BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    tensor = tl.load(blocks_ptr + 2 * pid)
    offs = tl.multiple_of(tl.load(blocks_ptr + 2 * pid + 1), BLOCK) + tl.arange(0, BLOCK)
    row = table_ptr + 5 * tensor  # (param, grad, exp_avg, exp_avg_sq) addresses, numel
    p_ptr = tl.load(row).to(tl.pointer_type(P_DTYPE))
    g_ptr = tl.load(row + 1).to(tl.pointer_type(G_DTYPE))
    m_ptr = tl.load(row + 2).to(tl.pointer_type(M_DTYPE))
    v_ptr = tl.load(row + 3).to(tl.pointer_type(M_DTYPE))
    mask = offs < tl.load(row + 4)
    g = tl.load(g_ptr + offs, mask=mask).to(COMPUTE)
    m, v, n = adam_moments(g, tl.load(m_ptr + offs, mask=mask).to(COMPUTE),
                            tl.load(v_ptr + offs, mask=mask).to(COMPUTE), beta1, one_minus_beta1, beta2,
                            one_minus_beta2, eps, COMPUTE)
    if STEP_SIZE_IN_MEMORY:  # a traced step's, a float64 tensor on the device: read there, no host sync
        step = tl.load(step_size_ptr).to(COMPUTE)
    else:
        step = tl.cast(step_size, COMPUTE)
    p = tl.load(p_ptr + offs, mask=mask).to(COMPUTE)
    p = (p - step * n) * tl.cast(keep, COMPUTE)
    tl.store(p_ptr + offs, round_to(p, P_DTYPE), mask=mask)
    tl.store(m_ptr + offs, m.to(M_DTYPE), mask=mask)
    tl.store(v_ptr + offs, v.to(M_DTYPE), mask=mask)


class _LaunchTables:
    """The device tables of a tensor list, kept while the same addresses come back (every step
    of a training loop), so a step copies nothing to the device."""

    def __init__(self, capacity: int = 64):
        self.capacity, self.tables = capacity, OrderedDict()

    def get(self, members, block: int, device):
        """``(table, block_map)``: a row per member (its tensors' addresses, then the first one's
        element count) and a ``(member, first element)`` row per program of ``block`` elements."""
        rows = tuple(tuple(t.data_ptr() for t in member) + (member[0].numel(),) for member in members)
        key = (rows, block, str(device))
        if key not in self.tables:
            blocks = [(t, start) for t, row in enumerate(rows) for start in range(0, row[-1], block)]
            pin = device.type == "cuda"
            table = torch.tensor(rows, dtype=torch.int64, pin_memory=pin).to(device, non_blocking=pin)
            block_map = torch.tensor(blocks, dtype=torch.int64, pin_memory=pin).to(device, non_blocking=pin)
            self.tables[key] = (table, block_map)
            if len(self.tables) > self.capacity:
                self.tables.popitem(last=False)
        self.tables.move_to_end(key)
        return self.tables[key]


TABLES = _LaunchTables()


def adam_(params, grads, moments1, moments2, *, beta1, beta2, eps, step_size, decay) -> None:
    """The reference's ``adam.adam_`` of every tensor, one launch per (device, dtypes). Every tensor
    is indexed flat: each must be contiguous, its gradient of its shape."""
    members = list(zip(params, grads, moments1, moments2))
    for p, g, m, v in members:  # every check before the first write
        launch.check_dtype(p, g, m)
        if m.dtype != v.dtype or not p.device == g.device == m.device == v.device:
            raise ValueError("adam_: a parameter's gradient and moments must share its device, and its two "
                             "moments one dtype")
        if not all(t.is_contiguous() for t in (p, g, m, v)) or g.shape != p.shape:
            raise ValueError("adam_: the multi-tensor kernel takes contiguous tensors, each gradient shaped "
                             "like its parameter")
    groups = defaultdict(list)
    for p, g, m, v in members:
        if p.numel():
            groups[(p.device, p.dtype, g.dtype, m.dtype)].append((p, g, m, v))
    for (device, p_dtype, g_dtype, m_dtype), members in groups.items():
        block = launch.elementwise_block(max(p.numel() for p, *_ in members))
        table, block_map = TABLES.get(members, block, device)
        in_memory = isinstance(step_size, torch.Tensor)
        _multi_adam_kernel[(block_map.shape[0],)](
            table, block_map, *betas(beta1, beta2), float(eps), 0.0 if in_memory else float(step_size),
            step_size.to(device, torch.float64) if in_memory else table, 1.0 - decay,
            P_DTYPE=launch.TL_DTYPES[p_dtype], G_DTYPE=launch.TL_DTYPES[g_dtype],
            M_DTYPE=launch.TL_DTYPES[m_dtype], COMPUTE=launch.compute_dtype(p_dtype),
            STEP_SIZE_IN_MEMORY=in_memory, BLOCK=block)


# -- the kernels as registered ops, which a traced step (torch.compile) calls as one op each ----------
# Dynamo sees each as an opaque op that writes its arguments in place; at run time it launches the
# kernels above. Only a traced step's calls (a tensor step size) go through them: an eager step calls
# the launchers directly, without the dispatcher's cost.

@torch.library.custom_op("lorenza::triton_projected_adam_", mutates_args=("W", "M", "V"))
def registered_projected_adam_(W: torch.Tensor, G: torch.Tensor, M: torch.Tensor, V: torch.Tensor,
                               basis: torch.Tensor, side: str, lift_scale: float, scale: float, beta1: float,
                               beta2: float, eps: float, step_size: torch.Tensor, decay: float,
                               projected: bool) -> None:
    projected_adam_(W, G, M, V, basis, side, lift_scale, scale=scale, residual=False, beta1=beta1,
                    beta2=beta2, eps=eps, step_size=step_size, decay=decay, projected=projected)


@registered_projected_adam_.register_fake
def _(W, G, M, V, basis, side, lift_scale, scale, beta1, beta2, eps, step_size, decay, projected) -> None:
    return None


@torch.library.custom_op("lorenza::triton_adam_", mutates_args=("params", "moments1", "moments2"))
def registered_adam_(params: list[torch.Tensor], grads: list[torch.Tensor], moments1: list[torch.Tensor],
                     moments2: list[torch.Tensor], beta1: float, beta2: float, eps: float,
                     step_size: torch.Tensor, decay: float) -> None:
    adam_(params, grads, moments1, moments2, beta1=beta1, beta2=beta2, eps=eps, step_size=step_size,
          decay=decay)


@registered_adam_.register_fake
def _(params, grads, moments1, moments2, beta1, beta2, eps, step_size, decay) -> None:
    return None
