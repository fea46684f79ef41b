"""The optimizers, one family per file."""
from .lowrank_adamw import LowRankAdamW
from .zo_sam import AdaZoSAM, Lorenza

__all__ = ["LowRankAdamW", "Lorenza", "AdaZoSAM"]
