"""The Triton kernels compile for the GPUs users have (sm_80 and sm_90), from this CPU: every kernel
at every setting the launch heuristic picks for LLaMA 60M-7B shapes (a covering subset: each setting
at least once), within the target's shared memory and without register spills
(bench/kernel_compiles.py; the full table is ``python -m bench``'s "GPU compile" section)."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, import_from_checkout, requires_triton

gpu_compile = import_from_checkout(".", "bench.kernel_compiles")

CAN_COMPILE = all(importlib.util.find_spec(name) for name in ("triton.backends.nvidia", "triton.knobs"))
pytestmark = [requires_triton, pytest.mark.skipif(
    not CAN_COMPILE, reason="compiling for a GPU needs Triton's NVIDIA backend and knobs (Triton 3.4 or newer)")]


@pytest.fixture(scope="module")
def rows():
    return gpu_compile.in_child_process("cover", "sm_80,sm_90", workers=2, timeout=1800)


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(rows):
    assert gpu_compile.problems(rows) == []
    compiled = {(row["kernel"], row["target"]) for row in rows}
    names = gpu_compile.kernel_functions()  # the interpreter's stand-ins here: their names
    assert compiled == {(name, target) for name in names for target in ("sm_80", "sm_90")}


def test_the_subset_covers_every_setting_the_heuristic_picks(rows):
    settings = {(row["kernel"], token) for row in rows for token in row["config"].split()}
    for expected in [("_rank_update_kernel", f"BLOCK_K={k}") for k in (1, 16, 32)] + [
            ("_rank_update_kernel", "A_NOISE=True"), ("_rank_update_kernel", "B_NOISE=True"),
            ("_rank_update_kernel", "HAS_GRAD=True"), ("_rank_update_kernel", "sw0=1"),  # transposed
            ("_rank_update_kernel", "sw1=1"), ("_fill_kernel", "ALIGNED=False"),
            ("_fill_kernel", "ALIGNED=True")] + [
            (kernel, f"STEP_SIZE_IN_MEMORY={traced}")
            for kernel in ("_multi_adam_kernel", "_multi_adam8_kernel") for traced in (False, True)] + [
            ("_project_adam_kernel", "m_ptr:bf16"), ("_subspace_adam_kernel", "m_ptr:bf16"),  # state_bits=16
            ("_multi_adam_kernel", "M_DTYPE=bf16")] + [
            (kernel, f"w_ptr:{dtype}") for kernel in ("_rank_update_kernel", "_gaussian_kernel")
            for dtype in ("fp32", "bf16", "fp16")]:
        assert expected in settings


def test_problems_names_a_compile_error_too_much_shared_memory_and_a_spill():
    base = dict(kernel="k", config="BLOCK=1", target="sm_90", shared_limit=1000, shared=0, spill_stores=0,
                spill_loads=0, registers=255)
    assert gpu_compile.problems([base]) == []
    found = gpu_compile.problems([dict(base, error="CompilationError: x"), dict(base, shared=1001),
                                  dict(base, spill_stores=8)])
    assert [text.split(" ")[-1] for text in found] == ["x", "1000", "registers)"]


def test_a_kernel_that_does_not_compile_raises(tmp_path):
    script = textwrap.dedent("""
        import torch, triton, triton.language as tl
        from bench.kernel_compiles import Launch, compile_for

        @triton.jit
        def broken_kernel(x_ptr, BLOCK: tl.constexpr):
            tl.store(x_ptr + tl.arange(0, BLOCK), tl.undefined_function(BLOCK))

        try:
            compile_for(Launch(broken_kernel, (torch.empty(16),), dict(BLOCK=16)), "sm_90")
        except Exception as err:
            print(type(err).__name__)
    """)
    (tmp_path / "broken.py").write_text(script)  # Triton reads a kernel's source from its file
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # bench
    done = subprocess.run([sys.executable, str(tmp_path / "broken.py")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.stdout.strip() == "CompilationError", done.stderr[-2000:]
