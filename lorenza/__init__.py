"""lorenza: memory-efficient LLM optimizers (LORENZA, AdaZo-SAM, GaLore-style projected Adam, MeZO,
LOZO, AdaZeta, ProjFactor).

Importing lorenza loads only torch: Triton, CUDA and the compiled ``lorenza._C`` are touched when
an op first runs.
"""
from . import adapters, linalg, random
from .memory import state_bytes
from .ops import BackendUnavailable
from .optim import LOZO, AdaZeta, AdaZoSAM, Lorenza, LowRankAdamW, MeZO, ProjFactor
from .param_groups import param_groups

__version__ = "0.1.0"

__all__ = ["LowRankAdamW", "Lorenza", "AdaZoSAM", "MeZO", "LOZO", "AdaZeta", "ProjFactor", "param_groups",
           "state_bytes", "BackendUnavailable", "adapters", "linalg", "random", "__version__"]
