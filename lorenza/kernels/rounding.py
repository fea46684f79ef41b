"""Rounding a computed value to a weight's storage dtype, to nearest even.

bf16 is rounded with integer arithmetic rather than ``.to(tl.bfloat16)``: Triton's interpreter
truncates that conversion, which would make the CPU tests see errors the GPU does not have. The
few integer operations are free in these memory-bound kernels.
"""
import triton
import triton.language as tl


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        nearest_even = bits + 0x7FFF + ((bits >> 16) & 1)
        bits = tl.where(x != x, bits | 0x10000, nearest_even)  # a NaN stays a NaN
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)
