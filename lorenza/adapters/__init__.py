"""Trainable modules inserted into a frozen model: tensor-train adapters (AdaZeta)."""
from .tt_adapter import TTAdapter, add_tt_adapters
from .tt_linear import TTLinear, factorize

__all__ = ["TTAdapter", "TTLinear", "add_tt_adapters", "factorize"]
