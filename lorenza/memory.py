"""What an optimizer holds in memory."""
import torch

from .distributed.shards import local


def _tensors(value) -> list:
    if torch.is_tensor(value):
        return [value]
    return [v for v in getattr(value, "__dict__", {}).values() if torch.is_tensor(v)]


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors ``optimizer`` keeps in its state on this rank (a DTensor's local block),
    scalars (step counts) left out. Tensors held by an object in the state count too: galore_torch
    keeps its basis in a projector object."""
    return sum(local(t).numel() * t.element_size() for state in optimizer.state.values()
               for value in state.values() for t in _tensors(value) if t.dim() > 0)
