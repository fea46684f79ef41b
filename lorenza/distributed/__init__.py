"""What the optimizers agree on across the processes of a ``torch.distributed`` job (the base seed,
the probe losses): with no process group initialised, nothing here communicates and everything is
as in a single process."""
import torch

from ..random import draw_seed


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if initialized() else 1


def mean_over_ranks(*scalars: torch.Tensor) -> tuple:
    """The one-element tensors ``scalars`` averaged over the ranks of the default process group (in
    float64, returned in their dtype); unchanged in a single process. One collective of
    ``len(scalars)`` elements."""
    if world_size() == 1:
        return scalars
    total = torch.stack([s.reshape(()) for s in scalars]).to(torch.float64)
    torch.distributed.all_reduce(total)
    return tuple((t / world_size()).to(s.dtype).reshape(s.shape) for t, s in zip(total, scalars))


def mean_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` averaged over the ranks of the default process group, in place (unchanged in a
    single process): what DDP does to a gradient. One collective of its size."""
    if world_size() > 1:
        torch.distributed.all_reduce(tensor)
        tensor.div_(world_size())
    return tensor


def any_over_ranks(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank of the default process group (``flag`` itself in a single
    process). A collective of one element."""
    if world_size() == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def agreed_seed() -> int:
    """A base seed every rank of the default process group shares: each rank draws one from its
    default generator (so each generator advances as in a single process), and rank 0's is taken.
    A collective: every rank must build its optimizer, as DDP and FSDP code does."""
    seed = draw_seed()
    if not initialized():
        return seed
    shared = [seed]
    torch.distributed.broadcast_object_list(shared, src=0)
    return int(shared[0])
