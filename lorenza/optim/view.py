"""A parameter as a step on this rank sees it (docs/design.md, "The optimizers"): the block of it
this rank holds, where that block sits in the whole, its param group and its id. Every optimizer
reaches FSDP2's sharding through this object (and its state through :func:`held`), so that the
optimizers read the same on one process and on many.

``LorenzaOptimizer.views()`` makes them, one per parameter per call: a view holds nothing a step
changes, and a fresh one never sees a stale group after ``load_state_dict``.
"""
from typing import NamedTuple, Optional

import torch

from ..distributed.shards import DTensor, RowShard, local, placed_like, row_shard, rows_of


def held(stored):
    """The block this rank holds of a state tensor placed like its parameter (the tensor itself on
    one process)."""
    return local(stored)


def is_dtensor(tensor) -> bool:
    """Whether ``tensor`` lives on a device mesh (FSDP2's parameters do, sharded or replicated)."""
    return isinstance(tensor, DTensor)


class ParamView(NamedTuple):
    """Parameter ``param`` of group ``group``, tensor id ``id`` (its position in ``state_dict``).

    - ``weight``: this rank's block (the parameter itself unless FSDP2 shards it);
    - ``shard``: the block's ``RowShard`` (global offset, every rank's rows, the group summing
      over them), None when every rank holds the whole (not a DTensor, or replicated).

    Immutable, as a named tuple: a step reads a view and never changes it. (Dynamo, when it traced
    the step, guarded ``optimizer.state[view.param]`` better for a tuple than for a plain object's
    attribute, but not well enough: the step is not traced, see ``LorenzaOptimizer.step``.)
    """

    param: torch.Tensor
    group: dict
    id: int
    weight: torch.Tensor
    shard: Optional[RowShard]

    @classmethod
    def of(cls, param, group: dict, tensor_id: int) -> "ParamView":
        """The view of ``param``; a DTensor sharded otherwise than on dim 0 raises here, before a step
        writes anything."""
        return cls(param, group, tensor_id, local(param), row_shard(param))

    @property
    def grad(self):
        """This rank's block of the gradient, None when there is none."""
        grad = self.param.grad
        return None if grad is None else local(grad)

    @property
    def rows(self):
        """The global rows of a state tensor shaped like the parameter (None for a 0-dim one): the
        ``rows`` of :meth:`placed`."""
        return rows_of(self.param)

    @property
    def first(self) -> int:
        """The global index of the first element this rank holds (0 unless sharded)."""
        if self.shard is None or not self.param.shape[0]:
            return 0
        return self.shard.offset * (self.param.numel() // self.param.shape[0])

    def placed(self, tensor, rows=None):
        """``tensor`` (this rank's block) as state placed like the parameter: itself on one process;
        for a DTensor parameter a DTensor sharded like it over ``rows`` global rows, or whole on
        every rank when ``rows`` is None."""
        return placed_like(self.param, tensor, rows)
