"""Build script of lorenza: the package layout and the optional C++/CUDA extension ``lorenza._C``.

Project metadata (name, version, dependencies) lives in pyproject.toml; this file only says what
to build. The extension is compiled from ``csrc/*.cpp`` (plus ``csrc/*.cu`` when PyTorch has CUDA
and nvcc is found) and is skipped entirely with ``LORENZA_NO_EXT=1``; the package then runs on its
PyTorch (and Triton) implementations.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))

PACKAGES = ["lorenza", "lorenza.optim", "lorenza.ops", "lorenza.reference", "lorenza.kernels",
            "lorenza.adapters", "lorenza.testing"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _cxx_accepts(flag: str) -> bool:
    """Whether the C++ compiler compiles and links a tiny OpenMP program with ``flag``."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"
    source = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as handle:
            handle.write(source)
        try:
            result = subprocess.run([compiler, flag, src, "-o", os.path.join(tmp, "probe")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


def _find_nvcc():
    """The nvcc that torch.utils.cpp_extension would use, or None."""
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home:
        nvcc = os.path.join(home, "bin", "nvcc")
        if os.path.exists(nvcc):
            return nvcc
    return None


def _extensions():
    if _env_flag("LORENZA_NO_EXT"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    with_cuda = bool(cuda_sources) and torch.version.cuda is not None and _find_nvcc() is not None

    # No -std flag: BuildExtension adds the standard this PyTorch's headers need (C++17 before
    # 2.10, C++20 since); the sources themselves are plain C++17.
    cxx_flags = ["-O3"]
    link_flags = []
    if sys.platform != "win32" and _cxx_accepts("-fopenmp"):
        # at::parallel_for is header code: without -fopenmp it silently runs on one thread.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    extra_compile_args = {"cxx": cxx_flags}
    define_macros = []
    if with_cuda:
        define_macros.append(("LORENZA_WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3"]  # define_macros reach nvcc too
        extension = CUDAExtension(
            "lorenza._C", sources + cuda_sources, include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros, extra_compile_args=extra_compile_args,
            extra_link_args=link_flags,
        )
    else:
        extension = CppExtension(
            "lorenza._C", sources, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args=extra_compile_args, extra_link_args=link_flags,
        )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=PACKAGES,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
