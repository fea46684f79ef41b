"""lorenza in Hugging Face's ``transformers.Trainer`` (docs/hf.md). Importing this module imports
transformers; ``import lorenza`` does not."""
from .accelerate import returning_loss
from .trainer import Trainer, hyperparameters, model_param_groups

__all__ = ["Trainer", "hyperparameters", "model_param_groups", "returning_loss"]
