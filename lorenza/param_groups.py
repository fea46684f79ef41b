"""Split a model's parameters into projected (low-rank) and plain param groups."""
import fnmatch

from torch import nn

# Last name components of output heads, which stay full-rank unless included by name.
HEAD_NAMES = ("lm_head", "head", "output", "classifier", "score", "embed_out")


def name_matches(name: str, patterns) -> bool:
    """A pattern matches a parameter name as a glob or as a substring."""
    return any(fnmatch.fnmatchcase(name, p) or p in name for p in patterns or ())


def param_groups(model: nn.Module, rank: int = 128, update_gap: int = 200, scale: float = 0.25,
                 include=None, exclude=None) -> list:
    """Param groups for the low-rank optimizers.

    The weights of ``nn.Linear`` layers are projected, except an output head (a layer named
    ``lm_head``, ``head``, ``output``, ``classifier``, ``score`` or ``embed_out``, or one whose
    weight is tied to an embedding). Embeddings, biases and norms stay plain. ``include`` names
    (globs or substrings of parameter names) add any 2-D parameter, embeddings and heads
    included; ``exclude`` names remove parameters from projection and wins over ``include``.
    Frozen parameters are left out. Returns ``[projected group, plain group]`` (empty ones
    dropped); the plain group has ``rank=None``.
    """
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_weights = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            is_head = module_name.rsplit(".", 1)[-1] in HEAD_NAMES or id(module.weight) in embedding_weights
            linear_weights[id(module.weight)] = not is_head
    projected, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        chosen = linear_weights.get(id(param), False) or (param.dim() == 2 and name_matches(name, include))
        (projected if chosen and not name_matches(name, exclude) else plain).append(param)
    groups = []
    if projected:
        groups.append({"params": projected, "rank": rank, "update_gap": update_gap, "scale": scale})
    if plain:
        groups.append({"params": plain, "rank": None})
    return groups
