"""Launch settings: a small deterministic heuristic, no autotuning (nothing runs twice, so no
optimizer state can be mutated by a trial launch).

Under the interpreter (``TRITON_INTERPRET=1``) each program instance costs Python overhead, so
blocks are as large as the tensors allow; on a GPU they fit the registers of one SM.
"""
import os

import torch
import triton
import triton.language as tl

from ..reference.precision import compute_dtype as torch_compute_dtype

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
             torch.float64: tl.float64}
SUPPORTED = tuple(TL_DTYPES)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_dtype(*tensors) -> None:
    for tensor in tensors:
        if tensor.dtype not in TL_DTYPES:
            raise TypeError(f"the Triton kernels take {', '.join(str(d) for d in SUPPORTED)} tensors, "
                            f"got {tensor.dtype}")


def compute_dtype(dtype: torch.dtype):
    """Arithmetic precision for a weight of ``dtype``, as the reference's rule says."""
    return TL_DTYPES[torch_compute_dtype(dtype)]


def dot_precision() -> str:
    """``tl.dot``'s precision for fp32 operands, following ``torch.set_float32_matmul_precision``."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def elementwise_block(numel: int, cap: int = 1024) -> int:
    """Elements per program of an elementwise kernel (a multiple of 4: whole Philox counters),
    at most ``cap`` on a GPU."""
    cap = 1 << 14 if interpreting() else cap
    return max(16, min(cap, triton.next_power_of_2(numel)))


def tile(rows: int, cols: int) -> tuple:
    """``(BLOCK_M, BLOCK_N)`` of an output tile."""
    cap = 128 if interpreting() else 64
    return (max(16, min(cap, triton.next_power_of_2(rows))), max(16, min(cap, triton.next_power_of_2(cols))))


def tile_warps(block_m: int, block_n: int) -> int:
    """Warps of a program computing a ``block_m x block_n`` tile: 8 for a 64 x 64 tile keeps its
    accumulator, operands and epilogue within the registers (16 accumulators per thread; at 4 warps
    the fp32 projection of a bf16 gradient spilled 600 B per thread on sm_80 and sm_90)."""
    return 8 if block_m * block_n >= 64 * 64 else 4


def register_budget(registers: int) -> dict:
    """Launch options that tell ptxas how many registers a thread may use. Without a budget it aims
    lower on the Box-Muller-heavy loops and spills (8-16 B per thread); given one, it fits them.
    ``maxnreg`` is the NVIDIA backend's option (ROCm's Triton rejects it)."""
    return {} if torch.version.hip else {"maxnreg": registers}


def inner_block(inner: int) -> int:
    """Block of a reduction dimension summed by ``tl.dot`` (16 or more)."""
    return max(16, min(128 if interpreting() else 32, triton.next_power_of_2(inner)))
