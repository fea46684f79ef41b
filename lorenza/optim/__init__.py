"""The optimizers, one family per file."""
from .adazeta import AdaZeta
from .lowrank_adamw import LowRankAdamW
from .lozo import LOZO
from .mezo import MeZO
from .projfactor import ProjFactor
from .zo_sam import AdaZoSAM, Lorenza

__all__ = ["LowRankAdamW", "Lorenza", "AdaZoSAM", "MeZO", "LOZO", "AdaZeta", "ProjFactor"]
