"""Split a model's parameters into projected (low-rank) and plain param groups."""
import fnmatch

from torch import nn

# Last name components of output heads, which stay full-rank unless included by name.
HEAD_NAMES = ("lm_head", "head", "output", "classifier", "score", "embed_out")
# Name components PEFT inserts around a wrapped layer (``lm_head.modules_to_save.default``,
# ``q_proj.base_layer``): the layer is named by what precedes them.
PEFT_WRAPPERS = ("modules_to_save", "original_module", "base_layer")
# Name components of PEFT's adapter matrices, low-rank already: never projected unless included.
ADAPTER_PREFIX = "lora_"


def name_matches(name: str, patterns) -> bool:
    """A pattern matches a parameter name as a glob or as a substring."""
    return any(fnmatch.fnmatchcase(name, p) or p in name for p in patterns or ())


def layer_name(module_name: str) -> str:
    """The last component of a module's name that is not a PEFT wrapper's (or its adapter's name)."""
    parts = module_name.split(".")
    for i, part in enumerate(parts):
        if part in PEFT_WRAPPERS:
            parts = parts[:i]
            break
    return parts[-1] if parts else ""


def _weights_of(module) -> set:
    """The ids of every parameter of ``module`` (a model API's answer: a layer, a PEFT wrapper of one,
    or None)."""
    return {id(p) for p in module.parameters()} if isinstance(module, nn.Module) else set()


def _model_answer(model: nn.Module, method: str):
    """``model.method()`` when the model has it (Hugging Face's ``get_output_embeddings``), else None."""
    get = getattr(model, method, None)
    try:
        return get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        return None


def param_groups(model: nn.Module, rank: int = 128, update_gap: int = 200, scale: float = 0.25,
                 include=None, exclude=None) -> list:
    """Param groups for the low-rank optimizers.

    The weights of ``nn.Linear`` layers are projected, except an output head: a layer named
    ``lm_head``, ``head``, ``output``, ``classifier``, ``score`` or ``embed_out``, the model's
    ``get_output_embeddings()`` (Hugging Face models), or one whose weight is tied to an
    embedding. PEFT's wrappers are seen through (a head wrapped as ``lm_head.modules_to_save``
    is a head) and its adapter matrices (``lora_A``, ``lora_B``), low-rank already, stay plain.
    Embeddings (``nn.Embedding`` and ``get_input_embeddings()``), biases and norms stay plain.
    ``include`` names (globs or substrings of parameter names) add any 2-D parameter, embeddings
    and heads included; ``exclude`` names remove parameters from projection and wins over
    ``include``. Frozen parameters are left out. Returns ``[projected group, plain group]`` (empty
    ones dropped); the plain group has ``rank=None``.
    """
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    embedding_weights |= _weights_of(_model_answer(model, "get_input_embeddings"))
    head_weights = _weights_of(_model_answer(model, "get_output_embeddings"))
    linear_weights = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            is_adapter = any(part.startswith(ADAPTER_PREFIX) for part in module_name.split("."))
            is_head = (layer_name(module_name) in HEAD_NAMES or id(module.weight) in embedding_weights
                       or id(module.weight) in head_weights)
            linear_weights[id(module.weight)] = not (is_head or is_adapter)
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
