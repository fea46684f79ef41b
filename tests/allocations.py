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


class _Saved:
    """A tensor autograd saved for backward, counted while the graph holds it."""

    def __init__(self, tensor, tally):
        self.tensor, self.tally, self.key = tensor, tally, tensor.untyped_storage().data_ptr()
        tally.hold(self.key, tensor.untyped_storage().nbytes())

    def __del__(self):
        self.tally.release(self.key)


class PeakSavedActivations:
    """The peak bytes of the tensors autograd keeps for backward (activations) inside the ``with``
    block, each storage counted once and the parameters' own (``exclude``) not at all."""

    def __init__(self, exclude=()):
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.held, self.live, self.peak = {}, 0, 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda saved: saved.tensor)

    def hold(self, key, nbytes):
        count, _ = self.held.get(key, (0, nbytes))
        if count == 0:
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self.held[key] = (count + 1, nbytes)

    def release(self, key):
        count, nbytes = self.held[key]
        self.held[key] = (count - 1, nbytes)
        if count == 1:
            self.live -= nbytes

    def _pack(self, tensor):
        if tensor.untyped_storage().data_ptr() in self.exclude:
            return _Unsaved(tensor)
        return _Saved(tensor, self)

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


class _Unsaved:
    def __init__(self, tensor):
        self.tensor = tensor
