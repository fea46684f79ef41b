import importlib
import importlib.util
import os
import pathlib
import sys

import pytest
import torch

if not torch.cuda.is_available():  # the Triton kernels run on CPU tensors through the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lorenza.ops import backend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = pathlib.Path(__file__).resolve().parents[1]


def import_from_checkout(folder: str, name: str):
    """A module of this checkout that is not installed: an example script (``examples``), or the
    benchmark package (``bench``, from the repository root)."""
    path = str(ROOT / folder)
    sys.path.insert(0, path)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(path)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """tests/test_benchmarks.py runs once and untimed in the suite; ``--benchmark-enable`` times it."""
    if config.pluginmanager.hasplugin("benchmark") and not config.getoption("benchmark_enable"):
        config.option.benchmark_disable = True


# -- the suite's tiers (README, "Tests"), marked here and nowhere else -------------------------------
# ``distributed``: gloo processes; ``interpreter``: Triton kernels through the interpreter; ``slow``:
# what the fast tier (``-m "not slow"``) leaves out. The fast tier still runs every optimizer (the
# kept trajectories on the torch and cpp backends, the optimizers' own files), every op and the
# Triton backend (every op's Triton kernel in test_fallback.py, the kernels' own small tests).
DISTRIBUTED = ("test_distributed_", "test_example_distributed")  # file name prefixes
INTERPRETER = ("test_triton_", "test_one_trajectory", "test_fallback")
SLOW_FILES = ("test_bench.py", "test_examples.py", "test_finetune_minilm.py", "test_hf_trainer_example.py",
              "test_step_memory.py", "test_gpu_compile.py", "test_cuda_sources.py", "test_one_trajectory.py",
              "test_triton_optimizers.py")
SLOW_TESTS = {  # file::test of other files, each several seconds on a 2-core CPU
    "test_hf_trainer.py::test_two_processes_through_accelerate_keep_identical_replicas_and_train_as_one",
    "test_hf_trainer.py::test_every_optimizer_trains_at_the_arguments_learning_rate_and_logs_its_real_loss",
    "test_hf_trainer.py::test_a_run_resumed_from_a_mid_run_checkpoint_ends_bit_identical",
    "test_hf_trainer.py::test_accumulating_two_micro_batches_of_4_is_one_batch_of_8",
    "test_hf_trainer.py::test_torch_compile_trains_as_the_eager_model",
    "test_state_bits.py::test_narrow_state_follows_the_float32_run_over_many_steps",
    "test_lozo.py::test_the_update_is_unbiased_up_to_the_rank",
    "test_package.py::test_without_the_extension_everything_runs_on_the_reference",
    "test_triton_perturb.py::test_gpu_launch_sizes_and_fp64",
    "test_kept_trajectories.py::test_two_optimizers_in_one_process_keep_their_own_backend",
    "test_compile.py::test_inductor_compiles_the_traced_step_across_refreshes",
    # and single cases, by their full names
    "test_compile.py::test_a_compiled_step_follows_eager_breaks_only_where_allowed_and_stops_compiling"
    "[LowRankAdamW-8bit-triton]",
    "test_compile.py::test_a_compiled_step_follows_eager_breaks_only_where_allowed_and_stops_compiling"
    "[LowRankAdamW-random-triton]",
}


def _tiers(item) -> set:
    name = item.path.name
    params = getattr(item, "callspec", None)
    tiers = set()
    if name.startswith(DISTRIBUTED):
        tiers |= {"distributed", "slow"}
    if name.startswith(INTERPRETER) or (params is not None and "triton" in params.params.values()):
        tiers.add("interpreter")
        if params is not None and "triton" in params.params.values():  # a whole run on the interpreter
            tiers.add("slow")
    if name in SLOW_FILES or {f"{name}::{item.originalname}", f"{name}::{item.name}"} & SLOW_TESTS:
        tiers.add("slow")
    return tiers


# Under pytest-xdist (the README's ``-n 2 --dist loadgroup``) a group runs on one worker: the gloo
# launches one at a time, and the files sharing the benchmarks' once-per-process counts together.
SHARED_BENCH = ("test_bench.py", "test_gpu_compile.py", "test_step_memory.py")


def _worker_group(item):
    name = item.path.name
    if name.startswith(DISTRIBUTED):
        return "distributed"
    return "bench" if name in SHARED_BENCH else None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        for tier in sorted(_tiers(item)):
            item.add_marker(tier)
        group = _worker_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: torch's threads would spin
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


requires_ext = pytest.mark.skipif(backend.ext() is None, reason="lorenza._C is not built")
requires_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                     reason="Triton is not installed")


@pytest.fixture
def torch_backend(monkeypatch):
    """Force the PyTorch reference for every op in the test."""
    monkeypatch.setenv("LORENZA_BACKEND", "torch")


@pytest.fixture
def triton_backend(monkeypatch):
    """Run every op that has a Triton kernel through it (the interpreter on CPU tensors)."""
    monkeypatch.setenv("LORENZA_BACKEND", "triton")
