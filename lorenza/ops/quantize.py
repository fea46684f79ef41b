"""Ops ``quantize8`` and ``dequantize8``: blockwise 8-bit codes of optimizer moments
(docs/algorithms.md, section 9). The format (block size, maps) is ``lorenza.reference.blockwise8``'s.
The Adam ops take such a moment as a :class:`Blockwise8` and update it in its codes (``adam.py``)."""
import contextlib
from typing import NamedTuple

import torch

from ..reference import blockwise8
from ..reference.blockwise8 import BLOCK, blocks, zero_code
from . import backend

QUANTIZE8 = backend.declare("quantize8", torch=blockwise8.quantize_, writes=(0, 1))
DEQUANTIZE8 = backend.declare("dequantize8", torch=blockwise8.dequantize)


class Blockwise8(NamedTuple):
    """A moment held in blockwise 8-bit codes: ``codes`` (uint8, the moment's shape) and ``absmax``
    (float32, one per block of ``BLOCK`` elements of the flattened codes)."""
    codes: torch.Tensor
    absmax: torch.Tensor


@torch.no_grad()
def quantize8_(codes: torch.Tensor, absmax: torch.Tensor, values: torch.Tensor, signed: bool) -> None:
    """Store ``values`` in ``codes`` (uint8, as many elements) and ``absmax`` (float32, one per block
    of ``BLOCK``), in place, with the signed or the unsigned map."""
    QUANTIZE8(values.device, codes, absmax, values, signed)


@torch.no_grad()
def dequantize8(codes: torch.Tensor, absmax: torch.Tensor, signed: bool, dtype=torch.float32) -> torch.Tensor:
    """The values ``codes`` and ``absmax`` stand for, shaped like ``codes``, in ``dtype``."""
    return DEQUANTIZE8(codes.device, codes, absmax, signed, dtype)


@contextlib.contextmanager
def updated8(moment: Blockwise8, start: int, stop: int, signed: bool, dtype=torch.float32):
    """The floats of elements ``start:stop`` of the flattened ``moment`` (``start`` a multiple of
    ``BLOCK``, ``stop`` too or the end), to update in place; quantized back when the block exits."""
    codes = moment.codes.view(-1)[start:stop]
    absmax = moment.absmax[start // BLOCK:blocks(stop)]
    values = dequantize8(codes, absmax, signed, dtype)
    yield values
    quantize8_(codes, absmax, values, signed)


__all__ = ["BLOCK", "Blockwise8", "blocks", "zero_code", "quantize8_", "dequantize8", "updated8"]
