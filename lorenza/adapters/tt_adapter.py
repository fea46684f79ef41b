"""Tensor-train bottleneck adapters (AdaZeta) and the helper that puts them into a model."""
import torch
from torch import nn

from ..param_groups import name_matches
from .tt_linear import TTLinear

ADAPTER_NAME = "tt_adapter"  # the attribute an adapted layer holds its adapter under


class TTAdapter(nn.Module):
    """``h + up(relu(down(h)))`` with ``down`` (``features -> bottleneck``) and ``up``
    (``bottleneck -> features``) tensor-train linear maps of TT-rank ``tt_rank``.

    ``up`` starts at zero (its last core), so an adapted model starts as the model it was; the
    adapter computes in its own dtype (float32 by default) and returns ``h``'s dtype.
    """

    def __init__(self, features: int, bottleneck: int = 64, tt_rank: int = 5, order: int = 3, device=None,
                 dtype=None):
        super().__init__()
        self.down = TTLinear(features, bottleneck, tt_rank, order, device=device, dtype=dtype)
        self.up = TTLinear(bottleneck, features, tt_rank, order, zero_last_core=True, device=device,
                           dtype=dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        work = h.to(self.down.cores[0].dtype)
        return h + self.up(torch.relu(self.down(work))).to(h.dtype)


def _adapt_output(module, inputs, output):
    # A module-level function (not a closure) so that adapted models deep-copy and pickle.
    return getattr(module, ADAPTER_NAME)(output)


def add_tt_adapters(model: nn.Module, targets, bottleneck: int = 64, tt_rank: int = 5, order: int = 3,
                    trainable=()) -> dict:
    """Put a :class:`TTAdapter` on the output of every ``nn.Linear`` whose name matches ``targets``
    and freeze every other parameter of ``model``.

    ``targets`` and ``trainable`` are names or globs matched against module and parameter names
    (a substring matches too), e.g. ``targets=["attention.output.dense", "output.dense"]`` for a
    BERT, ``trainable=["classifier"]`` to also train a task head. The adapter becomes a child
    ``tt_adapter`` of the linear layer and runs in a forward hook, so the model's own
    ``state_dict`` keys are unchanged (adapter entries are added). Returns ``{layer name:
    adapter}``; raises ``ValueError`` when no linear layer matches or a layer has an adapter.
    """
    if isinstance(targets, str):
        targets = [targets]
    if isinstance(trainable, str):
        trainable = [trainable]
    chosen = {name: module for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and name_matches(name, targets)}
    if not chosen:
        linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        raise ValueError(f"add_tt_adapters: no nn.Linear matches {list(targets)}; the model's linear "
                         f"layers include {linears[:8]}")
    for name, module in chosen.items():
        if hasattr(module, ADAPTER_NAME):
            raise ValueError(f"add_tt_adapters: {name} already has an adapter")
    adapters = {}
    for name, module in chosen.items():
        adapters[name] = TTAdapter(module.out_features, bottleneck, tt_rank, order,
                                   device=module.weight.device)
        module.add_module(ADAPTER_NAME, adapters[name])
        module.register_forward_hook(_adapt_output)
    adapter_params = {id(p) for adapter in adapters.values() for p in adapter.parameters()}
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) in adapter_params or name_matches(name, trainable))
    return adapters
