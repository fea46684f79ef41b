"""lorenza: memory-efficient LLM optimizers (LORENZA, AdaZo-SAM, GaLore-style projected Adam).

Importing lorenza loads only torch: Triton, CUDA and the compiled ``lorenza._C`` are touched when
an op first runs.
"""
from . import linalg, random
from .optim import AdaZoSAM, Lorenza, LowRankAdamW
from .param_groups import param_groups

__version__ = "0.1.0"

__all__ = ["LowRankAdamW", "Lorenza", "AdaZoSAM", "param_groups", "linalg", "random", "__version__"]
