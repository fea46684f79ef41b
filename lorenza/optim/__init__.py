"""The optimizers, one public optimizer per file, over small bases: ``base`` (all), ``projected``
(the projected ones) with ``projected_adam`` and ``sam`` (the shared updates), ``zeroth_order``
(the forward-only ones)."""
from .adazeta import AdaZeta
from .adazo_sam import AdaZoSAM
from .lorenza import Lorenza
from .lowrank_adamw import LowRankAdamW
from .lozo import LOZO
from .mezo import MeZO
from .projfactor import ProjFactor

__all__ = ["LowRankAdamW", "Lorenza", "AdaZoSAM", "MeZO", "LOZO", "AdaZeta", "ProjFactor"]
