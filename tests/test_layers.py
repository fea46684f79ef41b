"""The package's layers (docs/design.md): ``kernels/`` and ``reference/`` import nothing above
themselves, and the optimizers reach an implementation only through the op layer."""
import ast
import importlib
import pathlib
import sys

import pytest
from conftest import requires_triton

import lorenza

PACKAGE = pathlib.Path(lorenza.__file__).parent
THIRD_PARTY = {"reference": {"torch"}, "kernels": {"torch", "triton"}}
LORENZA_ALLOWED = {"reference": ("lorenza.reference",), "kernels": ("lorenza.kernels", "lorenza.reference")}
PAST_THE_OP_LAYER = ("lorenza.kernels", "lorenza.reference", "lorenza.ops.backend", "lorenza._C",
                     "lorenza.backend")


def modules_of(folder: str) -> list:
    return sorted((PACKAGE / folder).glob("*.py"))


def module_name(path: pathlib.Path) -> str:
    parts = ("lorenza",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: pathlib.Path) -> set:
    """Every module (or module attribute) a file imports, relative imports made absolute."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_inspection_sees_relative_imports():
    """The helper below every assertion here: a relative import into a layer above is seen."""
    names = imported(PACKAGE / "optim" / "lozo.py")
    assert "lorenza.ops" in names and "lorenza.projector.work_dtype" in names


@pytest.mark.parametrize("layer", ["reference", "kernels"])
def test_bottom_layers_import_nothing_above_themselves(layer):
    if layer == "kernels":
        pytest.importorskip("triton")
    paths = modules_of(layer)
    assert paths
    for path in paths:
        importlib.import_module(module_name(path))
        for name in imported(path):
            top = name.split(".")[0]
            if top == "lorenza":
                assert name.startswith(LORENZA_ALLOWED[layer]), f"{path.name} imports {name}"
            else:
                assert top in THIRD_PARTY[layer] or top in sys.stdlib_module_names, \
                    f"{path.name} imports {name}"


@pytest.mark.parametrize("path", modules_of("optim"), ids=lambda p: p.name)
def test_optimizers_reach_implementations_only_through_the_op_layer(path):
    importlib.import_module(module_name(path))
    for name in imported(path):
        assert not name.startswith(PAST_THE_OP_LAYER), f"{path.name} imports {name}"


@requires_triton
def test_the_op_table_names_functions_that_exist():
    from lorenza.ops import backend
    for op, declared in backend.OPS.items():
        assert backend.TORCH in declared.implementations, op
        for name in declared.implementations:
            if name != backend.EXT or backend.ext() is not None:
                assert callable(backend.implementation(op, name)), (op, name)


MOST_CLASSES_BELOW_OPTIMIZER = 3  # the public class, at most one shared base, LorenzaOptimizer


def classes_below_optimizer(cls) -> list:
    """The classes of ``cls``'s chain down from it to ``torch.optim.Optimizer`` (itself included, the
    Optimizer and what is above it not)."""
    import torch
    return [c for c in cls.__mro__ if issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer]


def test_the_depth_count_sees_a_deep_chain():
    import torch

    class Deep(lorenza.LowRankAdamW):
        pass

    class Deeper(Deep):
        pass
    assert classes_below_optimizer(torch.optim.AdamW) == [torch.optim.AdamW, torch.optim.Adam]
    assert len(classes_below_optimizer(Deeper)) == len(classes_below_optimizer(lorenza.LowRankAdamW)) + 2


@pytest.mark.parametrize("name", lorenza.optim.__all__)
def test_every_public_optimizer_is_at_most_three_classes_below_torch_optim(name):
    chain = classes_below_optimizer(getattr(lorenza, name))
    assert len(chain) <= MOST_CLASSES_BELOW_OPTIMIZER, " -> ".join(c.__name__ for c in chain)


def layer_list() -> list:
    """The package's entries in docs/design.md's layer list, top first: ``lorenza/optim/``,
    ``lorenza/projector.py``, ..."""
    text = (PACKAGE.parent / "docs" / "design.md").read_text()
    block = text.split("## Layers", 1)[1].split("```")[1]
    return [line.split()[0] for line in block.splitlines() if line.startswith("lorenza/")]


def layer_of(module: str, layers: list) -> int:
    """The index in ``layers`` of the entry holding ``module`` (``lorenza.optim.sam`` is in
    ``lorenza/optim/``)."""
    if module == "lorenza":
        return layers.index("lorenza/__init__.py")
    parts = module.split(".")
    for depth in (2, 1):
        folder, file = "/".join(parts[:depth]) + "/", "/".join(parts[:depth]) + ".py"
        for entry in (folder, file):
            if entry in layers:
                return layers.index(entry)
    raise AssertionError(f"{module} is in no entry of docs/design.md's layer list")


def test_every_module_imports_only_layers_below_its_own_in_the_design_list():
    layers = layer_list()
    assert layers[:2] == ["lorenza/__main__.py", "lorenza/__init__.py"] and "lorenza/optim/" in layers
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module, layers)
        for name in imported(path):
            if name.startswith("lorenza.") and name.split(".")[1] not in ("_C", "__version__"):
                target = ".".join(name.split(".")[:2]) if (PACKAGE / name.split(".")[1]).is_dir() else name
                assert layer_of(target, layers) >= own, f"{module} imports {name}, a layer above it"


MOST_OPTIM_MODULES_IMPORTING_DISTRIBUTED = 2  # the parameter's view and the optimizer's ranks


def test_at_most_two_optim_modules_import_lorenza_distributed():
    """Sharding stays behind ``optim/view.py`` and ``optim/ranks.py``: the optimizers see a parameter
    through its ``ParamView`` and make collectives through their ``Ranks``."""
    importing = [path.name for path in modules_of("optim")
                 if any(name == "lorenza.distributed" or name.startswith("lorenza.distributed.")
                        for name in imported(path))]
    assert "view.py" in importing  # the inspection sees what it counts
    assert len(importing) <= MOST_OPTIM_MODULES_IMPORTING_DISTRIBUTED, importing
