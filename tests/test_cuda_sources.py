"""Every CUDA source compiles with ``nvcc -c`` against this torch's headers: the check a machine without
a GPU can make (the kernels themselves are verified on a GPU; see bench/gpu.sh)."""
import os
import pathlib
import shutil
import subprocess
import sysconfig

import pytest
import torch
from torch.utils import cpp_extension

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"
SOURCES = sorted(CSRC.glob("*.cu"))
NVCC = shutil.which("nvcc")


def toolkit_include():
    """The CUDA headers of the toolkit nvcc belongs to (CUDA_HOME, else the default install)."""
    home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return pathlib.Path(home) / "include"


def test_there_are_cuda_sources():
    assert {p.name for p in SOURCES} >= {"noise_cuda.cu", "rsvd_cuda.cu"}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(source, tmp_path):
    include = [f"-I{d}" for d in cpp_extension.include_paths()] + [f"-I{CSRC}",
                                                                   f"-I{sysconfig.get_paths()['include']}"]
    include.append(f"-I{toolkit_include()}")
    generated = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any((pathlib.Path(d) / generated).exists() for d in cpp_extension.include_paths()):
        # A CPU build of torch ships c10/cuda's headers but not this one, which its CUDA build
        # generates; a CUDA build defines just this (shared libraries).
        shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        include.append(f"-I{tmp_path / 'shim'}")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [NVCC, "-c", str(source), "-o", str(tmp_path / "out.o"), "-std=c++20", "-O0",
               "-DLORENZA_WITH_CUDA", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DTORCH_EXTENSION_NAME=_C",
               "--expt-relaxed-constexpr", "-arch=sm_90", *include]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
