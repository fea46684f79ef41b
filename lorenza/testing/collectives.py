"""What ``torch.distributed`` collectives send, counted, for the tests and benchmarks of lorenza
under ``torch.distributed``."""
import torch.distributed as dist

OPTIMIZER = ("all_reduce", "broadcast")  # what lorenza's optimizers call
# what FSDP2 calls (the *_single ones in recent torch), each counted by its first argument, the output
FSDP = ("all_gather_into_tensor", "reduce_scatter_tensor", "all_gather", "all_gather_single",
        "reduce_scatter_single")


class Tally:
    """While installed (``with Tally() as sent``), every call of the collectives ``names`` is
    recorded in ``sent.calls`` as ``(name, elements, bytes)``; DDP's reducer, which calls the process group
    directly, is not seen."""

    def __init__(self, names=OPTIMIZER + FSDP):
        self.names = tuple(name for name in names if hasattr(dist, name))  # those this torch has
        self.calls, self._saved = [], {}

    def __enter__(self):
        for name in self.names:
            original = self._saved[name] = getattr(dist, name)

            def counted(*args, name=name, original=original, **kwargs):
                first = args[0] if args else next(iter(kwargs.values()))  # FSDP2 passes keywords
                tensors = first if isinstance(first, list) else [first]
                self.calls.append((name, sum(t.numel() for t in tensors),
                                   sum(t.numel() * t.element_size() for t in tensors)))
                return original(*args, **kwargs)
            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(dist, name, original)

    def sizes(self, names=OPTIMIZER) -> list:
        """The element counts of the calls of ``names``, in order."""
        return [count for name, count, _ in self.calls if name in names]

    def bytes(self, names=OPTIMIZER) -> int:
        """The bytes the calls of ``names`` sent, in all."""
        return sum(nbytes for name, _, nbytes in self.calls if name in names)
