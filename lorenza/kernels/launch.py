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


def elementwise_block(numel: int) -> int:
    """Elements per program of an elementwise kernel (a multiple of 4: whole Philox counters)."""
    cap = 1 << 14 if interpreting() else 1024
    return max(16, min(cap, triton.next_power_of_2(numel)))


def tile(rows: int, cols: int) -> tuple:
    """``(BLOCK_M, BLOCK_N)`` of an output tile."""
    cap = 128 if interpreting() else 64
    return (max(16, min(cap, triton.next_power_of_2(rows))), max(16, min(cap, triton.next_power_of_2(cols))))


def inner_block(inner: int, small_ok: bool = False) -> int:
    """Block of a reduction dimension. ``tl.dot`` needs 16 or more; ``small_ok`` lets a short one
    (a rank below 16) be summed by broadcasting instead, with no padded Philox work."""
    size = triton.next_power_of_2(inner)
    if small_ok and size < 16:
        return size
    return max(16, min(128 if interpreting() else 32, size))
