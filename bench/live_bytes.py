"""A tally of live tensor bytes, kept at the dispatcher: each storage an op returns counts from the op
until the storage is freed (a weak reference to it), so the peak is that of the tensors themselves,
whatever the allocator caches, on any device. On the meta device, where nothing is allocated, it
counts the bytes a real device would hold, and answers the scalar reads (``.item()``, ``float()``,
``bool()``) that a step makes with made-up values: finite, true, and different each time, so that the
step takes the same path as on real data."""
import itertools
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_SCALAR_READ = torch.ops.aten._local_scalar_dense.default


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes(breakdown) as tally:`` records ``tally.peak`` (bytes) and, at that moment,
    ``tally.at_peak = breakdown()`` (called at each new peak). Tensors made before the block count
    from :meth:`hold` on."""

    def __init__(self, breakdown=None):
        super().__init__()
        self.breakdown, self.at_peak = breakdown, None
        self.sizes, self.total, self.peak = {}, 0, 0
        self._made_up = itertools.count(1)

    def hold(self, tensors) -> None:
        """Count these (existing) tensors' storages from now until they are freed."""
        for tensor in tensors:
            self._track(tensor)
        self._new_peak()

    def _track(self, tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key not in self.sizes:
            self.sizes[key] = storage.nbytes()
            self.total += self.sizes[key]
            weakref.finalize(storage, self._release, key)

    def _release(self, key) -> None:
        self.total -= self.sizes.pop(key)

    def _new_peak(self) -> None:
        if self.total > self.peak:
            self.peak = self.total
            if self.breakdown is not None:
                self.at_peak = self.breakdown()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _SCALAR_READ and args[0].device.type == "meta":
            return self._made_up_scalar(args[0].dtype)
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        self._new_peak()
        return out

    def _made_up_scalar(self, dtype):
        if dtype == torch.bool:
            return True
        value = next(self._made_up)
        return value if not dtype.is_floating_point else 1.0 + 1e-3 * value


def storage_bytes(tensors) -> int:
    """The bytes of the distinct storages under ``tensors``."""
    seen = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[id(storage)] = storage.nbytes()
    return sum(seen.values())
