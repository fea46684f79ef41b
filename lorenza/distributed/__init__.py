"""What the optimizers agree on across the processes of a ``torch.distributed`` job (the base seed,
the probe losses, DCP's initialising step, averaged projections): with no process group
initialised, nothing here communicates and everything is as in a single process.

``group`` is an optimizer's ``process_group``: the replicas it keeps in step (None: the default
group); :func:`data_parallel_group` gives the default an optimizer takes.
"""
import torch

from ..random import draw_seed


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size(group=None) -> int:
    return torch.distributed.get_world_size(group) if initialized() else 1


def data_parallel_group(params):
    """The group an optimizer of ``params`` (tensors or param-group dicts) agrees over by default:
    the device mesh of its DTensor parameters when that mesh is one-dimensional (FSDP2), else the
    default group (None)."""
    if not initialized():
        return None
    from .shards import DTensor

    for item in params:
        inner = item["params"] if isinstance(item, dict) else item
        # a group's tensor or list (an iterator is left unread for the optimizer to consume)
        for param in [inner] if torch.is_tensor(inner) else inner if isinstance(inner, (list, tuple)) else []:
            if isinstance(param, DTensor) and param.device_mesh.ndim == 1:
                return param.device_mesh.get_group()
    return None


def mean_over_ranks(*scalars: torch.Tensor, group=None) -> tuple:
    """The one-element tensors ``scalars`` averaged over the ranks of ``group`` (in float64, returned
    in their dtype); unchanged in a single process. One collective of ``len(scalars)`` elements."""
    size = world_size(group)
    if size == 1:
        return scalars
    total = torch.stack([s.reshape(()) for s in scalars]).to(torch.float64)
    torch.distributed.all_reduce(total, group=group)
    return tuple((t / size).to(s.dtype).reshape(s.shape) for t, s in zip(total, scalars))


def mean_(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """``tensor`` averaged over the ranks of ``group``, in place (unchanged in a single process): what
    DDP does to a gradient. One collective of its size."""
    size = world_size(group)
    if size > 1:
        torch.distributed.all_reduce(tensor, group=group)
        tensor.div_(size)
    return tensor


def any_over_ranks(flag: bool, group=None, device=None) -> bool:
    """Whether ``flag`` holds on any rank of ``group`` (``flag`` itself in a single process). A
    collective of one element, on ``device`` (where the group's backend runs: CUDA for NCCL)."""
    if world_size(group) == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX, group=group)
    return bool(value.item())


def first_ranks(value, group=None):
    """The group's first rank's ``value`` (any picklable object), on every rank; ``value`` itself in a
    single process. A collective."""
    if world_size(group) == 1:
        return value
    shared = [value]
    first = 0 if group is None else torch.distributed.get_global_rank(group, 0)
    torch.distributed.broadcast_object_list(shared, src=first, group=group)
    return shared[0]


def agreed_seed(group=None) -> int:
    """A base seed every rank of ``group`` shares: each rank draws one from its default generator
    (so each generator advances as in a single process), and the first rank's is taken. A
    collective: every rank must build its optimizer, as DDP and FSDP code does."""
    return int(first_ranks(draw_seed(), group))
