"""Ops ``quantize8`` and ``dequantize8``: blockwise 8-bit codes of optimizer moments
(docs/algorithms.md, section 9). The format (block size, maps) is ``lorenza.reference.blockwise8``'s;
the PyTorch reference is the only implementation so far."""
import torch

from ..reference.blockwise8 import BLOCK, blocks, zero_code
from . import backend


@torch.no_grad()
def quantize8_(codes: torch.Tensor, absmax: torch.Tensor, values: torch.Tensor, signed: bool) -> None:
    """Store ``values`` in ``codes`` (uint8, as many elements) and ``absmax`` (float32, one per block
    of ``BLOCK``), in place, with the signed or the unsigned map."""
    backend.call("quantize8", values.device, codes, absmax, values, signed)


@torch.no_grad()
def dequantize8(codes: torch.Tensor, absmax: torch.Tensor, signed: bool, dtype=torch.float32) -> torch.Tensor:
    """The values ``codes`` and ``absmax`` stand for, shaped like ``codes``, in ``dtype``."""
    return backend.call("dequantize8", codes.device, codes, absmax, signed, dtype)


__all__ = ["BLOCK", "blocks", "zero_code", "quantize8_", "dequantize8"]
