"""FSDP2's gathered copies of moved weights (docs/distributed.md).

A module sharded with ``reshard_after_forward=False`` (and FSDP2's root module, by default) keeps
its all-gathered parameters after a forward pass until backward; a forward-only probe that moves
the sharded weights and runs the closure again would see the stale gathered copy. So after moving
weights between forward passes, the optimizers reshard the FSDP modules that hold them (the next
forward gathers the moved shards). FSDP2 has no public map from a parameter to its module: it is
read from FSDP2's registry of module states, and a torch whose internals differ raises here rather
than probing stale weights.
"""
from .shards import DTensor


def owners(params) -> list:
    """The FSDP2 modules holding any of ``params`` (none when no parameter is a DTensor)."""
    ids = {id(p) for p in params if isinstance(p, DTensor)}
    if not ids:
        return []
    from torch.distributed._composable_state import _module_state_mapping
    from torch.distributed.fsdp import FSDPModule

    found = []
    for module, state_ref in list(_module_state_mapping.items()):
        state = state_ref()
        if not isinstance(module, FSDPModule) or state is None:
            continue
        try:
            held = {id(p.sharded_param) for g in state._fsdp_param_groups for p in g.fsdp_params}
        except AttributeError as err:
            raise RuntimeError("this torch's FSDP2 internals are not the ones lorenza reads to find the "
                               "modules of sharded parameters") from err
        if held & ids:
            found.append(module)
    return found


def reshard(modules) -> None:
    """Free the gathered parameters of ``modules`` (a no-op for those already sharded)."""
    for module in modules:
        module.reshard()
