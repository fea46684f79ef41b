"""DDP and the weights an optimizer reduces itself (docs/distributed.md).

An optimizer in per-layer mode (``LowRankAdamW``, ``Lorenza`` or ``ProjFactor`` with
``per_layer=True``) projects each gradient in backward, averages the ``m x r`` projection over the
ranks and frees the ``m x n`` gradient. DDP, which buckets every parameter when
it wraps a model, would still hold bucket memory for those weights and all-reduce their (then
empty) gradients. Called before wrapping, :func:`keep_out_of_ddp` tells DDP to leave them out: only
the projections cross the network for them, and no full gradient of theirs is kept.
"""
from torch.nn.parallel import DistributedDataParallel


def keep_out_of_ddp(module, optimizer) -> list:
    """Leave out of DDP (to be built on ``module`` afterwards) the parameters that ``optimizer``
    reduces in backward itself (its ``reduced_in_backward()``; none for an optimizer without it).
    Returns their names. DDP then does not broadcast them at construction either: build the model
    identically on every rank (same seed), as for any parameter DDP ignores."""
    reduced = {id(p) for p in getattr(optimizer, "reduced_in_backward", list)()}
    names = [name for name, param in module.named_parameters() if id(param) in reduced]
    ignored = list(getattr(module, "_ddp_params_and_buffers_to_ignore", [])) + names
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
    return names
