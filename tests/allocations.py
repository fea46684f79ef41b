"""A tracer of the tensors that operations allocate, for tests that bound an optimizer's temporaries."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _storages(tree):
    return {t.untyped_storage().data_ptr() for t in tree_leaves(tree) if isinstance(t, torch.Tensor)}


class LargestAllocation(TorchDispatchMode):
    """Records the largest new storage any aten op returns inside the ``with`` block (in-place ops
    and views return storages that already exist and are not counted). Buffers that a kernel
    allocates internally and frees before returning are not seen."""

    def __init__(self):
        super().__init__()
        self.nbytes, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        existing = _storages((args, kwargs))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in existing:
                if t.untyped_storage().nbytes() > self.nbytes:
                    self.nbytes, self.op = t.untyped_storage().nbytes(), str(func)
        return out
