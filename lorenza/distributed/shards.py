"""A parameter sharded by FSDP2 as one rank holds it (docs/distributed.md): its local rows, where they
sit in the whole, the process group holding the others; and state tensors placed like it.

FSDP2's ``fully_shard`` makes every parameter a DTensor sharded on dim 0 (``Shard(0)``, optionally
replicated over another mesh dimension, HSDP): each rank holds a contiguous block of rows, the blocks
sized as ``torch.chunk`` sizes them. The optimizers work on the local block; what is a sum over rows
(a left-side projection, a norm) is summed over the shard group with one all-reduce.
"""
import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # a torch built without distributed support: no tensor is a DTensor
    DTensor = Replicate = Shard = type("Unavailable", (), {})


def local(tensor):
    """The block of ``tensor`` this rank holds (the tensor itself when it is not a DTensor)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def chunk_sizes(total: int, parts: int) -> list:
    """The sizes ``torch.chunk`` (so DTensor's ``Shard``) gives ``parts`` blocks of ``total`` rows."""
    size = -(-total // parts)
    return [max(0, min(size, total - i * size)) for i in range(parts)]


class RowShard:
    """Rows ``offset .. offset + rows - 1`` of a tensor of ``total`` rows; ``sizes`` are every rank's
    row counts in the order of ``group``'s ranks (this rank is ``index``)."""

    def __init__(self, sizes, index: int, group):
        self.sizes, self.index, self.group = list(sizes), index, group
        self.offset, self.rows, self.total = sum(sizes[:index]), sizes[index], sum(sizes)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the shards, in place (one all-reduce of its size)."""
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def folded(self, side: str, granularity: int, what: str) -> "RowShard":
        """The shard of the view projected at ``granularity`` (``projector.folded_shape``): each row
        becomes ``c`` rows on the right side; on the left ``c`` rows become one, so every block must
        hold whole groups of ``c``. The folded blocks must also be what ``torch.chunk`` makes of the
        folded rows, or the state of that view could not be a DTensor sharded like it; otherwise a
        ValueError names ``what``, the shard sizes and ``c``."""
        c = granularity
        if c == 1:
            return self
        if side == "right":
            sizes = [s * c for s in self.sizes]
        elif any(s % c for s in self.sizes):
            sizes = None
        else:
            sizes = [s // c for s in self.sizes]
        if sizes is None or sizes != chunk_sizes(sum(sizes), len(sizes)):
            raise ValueError(f"{what} is sharded in blocks of {self.sizes} rows over {len(self.sizes)} "
                             f"ranks, which do not fold at granularity {c} on the {side} side into blocks "
                             "sharded as FSDP shards (each block a multiple of c rows on the left side, the "
                             "folded blocks torch.chunk's blocks); use granularity 1 for it or a world size "
                             "that divides its rows evenly")
        return RowShard(sizes, self.index, self.group)


def row_shard(tensor):
    """The :class:`RowShard` of a DTensor sharded on dim 0, None for a tensor every rank holds whole
    (not a DTensor, or replicated). Other placements raise: FSDP2 shards on dim 0 only."""
    if not isinstance(tensor, DTensor):
        return None
    placements, mesh = tensor.placements, tensor.device_mesh
    sharded = [dim for dim, p in enumerate(placements) if not isinstance(p, Replicate)]
    if not sharded:
        return None
    if len(sharded) > 1 or placements[sharded[0]] != Shard(0):
        raise ValueError(f"lorenza supports DTensor parameters sharded on dim 0 (FSDP2's fully_shard, HSDP), "
                         f"got placements {placements} for one of shape {tuple(tensor.shape)}")
    dim = sharded[0]
    return RowShard(chunk_sizes(tensor.shape[0], mesh.size(dim)), mesh.get_local_rank(dim),
                    mesh.get_group(dim))


def rows_of(param):
    """``placed_like``'s ``rows`` for state shaped like ``param`` (None for a 0-dim one)."""
    return param.shape[0] if param.dim() else None


def placed_like(param, tensor: torch.Tensor, rows: int = None):
    """``tensor`` (this rank's block) as state placed like ``param``: unchanged when ``param`` is not a
    DTensor; else a DTensor on its mesh, sharded like it over ``rows`` global rows, or replicated
    (every rank holding the same values) when ``rows`` is None."""
    if not isinstance(param, DTensor):
        return tensor
    mesh = param.device_mesh
    if rows is None:
        return DTensor.from_local(tensor, mesh, [Replicate()] * mesh.ndim, run_check=False)
    shape = (rows, *tensor.shape[1:])
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(tensor, mesh, param.placements, run_check=False, shape=shape, stride=stride)


def total(parts) -> float:
    """The sum of ``(value, shard)`` pairs: a value with no shard is whole on every rank and added
    as it is; the shares of sharded tensors are summed over their groups, one all-reduce per group
    (in float64)."""
    result, shares = 0.0, {}
    for value, shard in parts:
        if shard is None:
            result += float(value)
        else:
            shares.setdefault(shard.group, []).append(value.double().reshape(()))
    for group, values in shares.items():  # the same order on every rank: the parameters' order
        summed = torch.stack(values).sum().reshape(1)
        dist.all_reduce(summed, group=group)
        result += float(summed)
    return result
