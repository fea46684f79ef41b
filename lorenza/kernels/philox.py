"""Device-side noise of ``lorenza.random``: element ``i`` of stream ``key`` is lane ``i % 4`` of
Triton's ``randn4x(key, i // 4)``, the same Philox4x32-10 and Box-Muller as the PyTorch reference.

``normals_4x`` makes a run of consecutive elements (no wasted Philox work); ``normal_at`` makes
elements at arbitrary indices (a tile of a row-major ``U`` or ``Z``), running one Box-Muller pair per
element; ``stream_at`` picks one of a launch's four stream arguments inside a loop over streams.
``normal_`` is the fill kernel behind ``lorenza.random.normal_``.
"""
import torch
import triton
import triton.language as tl

from . import launch


@triton.jit
def normals_4x(key, first_counter, COUNTERS: tl.constexpr):
    """Elements ``4 * first_counter ..`` (``4 * COUNTERS`` of them) of stream ``key``, in order."""
    counter = first_counter + tl.arange(0, COUNTERS).to(tl.int64)
    n0, n1, n2, n3 = tl.randn4x(key, counter)
    return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))


@triton.jit
def normal_at(key, index):
    """Element ``index`` (an int64 block) of stream ``key``."""
    lane = index % 4
    w0, w1, w2, w3 = tl.randint4x(key, index // 4)
    high_pair = lane >= 2  # lanes 2, 3 come from the words w2, w3
    u1 = tl.random.uint_to_uniform_float(tl.where(high_pair, w2, w0))
    u2 = tl.random.uint_to_uniform_float(tl.where(high_pair, w3, w1))
    cosine, sine = tl.random.pair_uniform_to_normal(u1, u2)
    return tl.where(lane % 2 == 0, cosine, sine)


@triton.jit
def stream_at(j, k0, k1, k2, k3, c0, c1, c2, c3):
    """Key (as the uint64 Philox takes it) and coefficient of stream ``j``, a runtime index: the
    streams are summed by a loop rather than unrolled, so the Philox and Box-Muller code exists
    once per kernel rather than once per stream (docs/performance.md, "Compiled for the GPU")."""
    key = tl.where(j == 0, k0.to(tl.uint64), tl.where(j == 1, k1.to(tl.uint64),
                                                      tl.where(j == 2, k2.to(tl.uint64), k3.to(tl.uint64))))
    coeff = tl.where(j == 0, c0, tl.where(j == 1, c1, tl.where(j == 2, c2, c3)))
    return key, coeff


@triton.jit(do_not_specialize=["key", "start"])
def _fill_kernel(out_ptr, numel, key, start, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * BLOCK
    offs = base + tl.arange(0, BLOCK)
    if ALIGNED:  # start % 4 == 0: whole counters, four normals per Philox call
        values = normals_4x(key, (start + base) // 4, BLOCK // 4)
    else:
        values = normal_at(key, start + offs)
    tl.store(out_ptr + offs, values, mask=offs < numel)


def normal_(out: torch.Tensor, key: int, start: int = 0) -> torch.Tensor:
    """Fill a contiguous float32 tensor with elements ``start ..`` of stream ``key``."""
    numel = out.numel()
    if numel:
        # few normals per thread keep libdevice's sin/cos within the registers (no spills on sm_80/90):
        # one Philox counter (4 normals) per thread of 8 warps, or 2 normals, each its own Philox call
        aligned = start % 4 == 0
        block = launch.elementwise_block(numel, cap=1024 if aligned else 256)
        grid = (triton.cdiv(numel, block),)
        _fill_kernel[grid](out, numel, key, start, BLOCK=block, ALIGNED=aligned,
                           num_warps=8 if aligned else 4)
    return out


# -- the fill as a registered op, which a traced step (torch.compile) calls as one op: a Gaussian
# basis regenerated from its key at every step (projected_adam.py says why the kernels are ops) -----

@torch.library.custom_op("lorenza::triton_normal_", mutates_args=("out",))
def registered_normal_(out: torch.Tensor, key: int, start: int) -> None:
    normal_(out, key, start)


@registered_normal_.register_fake
def _(out, key, start) -> None:
    return None
