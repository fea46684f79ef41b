"""Compile lorenza's Triton kernels for GPUs that are not here (docs/performance.md, "Compiled for
the GPU, checked without one").

The kernels' own wrappers are run on the shapes users train (LLaMA 60M to 7B, every rank path,
every weight dtype) with each kernel's launch replaced by a recorder, so what is recorded is exactly
what the launch heuristic picks on a GPU. Each distinct launch is then compiled by Triton's compiler
for an sm_80 or sm_90 target, and what ptxas reports is read back: registers, spills, shared memory
and the compile time a user's first step waits for. Nothing runs and no GPU is needed; the process
must not set ``TRITON_INTERPRET`` (the kernels must be compilable and the heuristic the GPU's).

``python -m bench.kernel_compiles [--variants all|configs|cover] [--targets sm_80,sm_90]
[--workers N]`` prints the table as JSON lines; ``python -c "from bench import gpu_compile;
gpu_compile.run()"`` (from the repository root) prints it as the benchmark's table, as kept in
``bench/results/gpu-compile-cpu-2core-<date>.txt``.
"""
import argparse
import concurrent.futures
import contextlib
import dataclasses
import importlib
import io
import itertools
import json
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import time
import warnings

import torch

from lorenza.reference.precision import compute_dtype
from lorenza.testing.llama import LLAMA, weight_shapes

# compute capability and the most shared memory one block may opt into (CUDA's programming guide)
TARGETS = {"sm_80": (80, 163 * 1024), "sm_90": (90, 227 * 1024)}
RANKS = (1, 2, 4, 7, 8, 16, 32, 64, 100, 128, 256, 512)  # each rank path: outer products, 16, 32, capped
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SIDES = ("right", "left")


@dataclasses.dataclass
class Launch:
    """One recorded launch: the kernel and the arguments it was called with."""

    kernel: object
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def bind(self, target: str):
        """Triton's own binding of the arguments for ``target``: the specialization (dtypes,
        16-divisible ints and pointers, ints equal to 1, constexprs) a launch there compiles."""
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        backend = make_backend(GPUTarget("cuda", TARGETS[target][0], 32))
        binder = create_function_from_signature(self.kernel.signature, self.kernel.params, backend)
        bound, specialization, options = binder(*self.args, **self.kwargs)
        return backend, bound, specialization, options

    def options(self) -> dict:
        """The launch options (``num_warps``, ``maxnreg``): the arguments that are not parameters."""
        return {k: v for k, v in self.kwargs.items() if k not in self.kernel.arg_names}

    def config(self) -> str:
        """What distinguishes this compiled variant from the kernel's others, readably: constexprs,
        pointer dtypes, ints specialized to 1 (unit strides), launch options."""
        _, _, specialization, _ = self.bind("sm_90")
        parts = []
        for param, (kind, attr) in zip(self.kernel.params, specialization):
            if kind == "constexpr":
                value = attr if not hasattr(attr, "name") else attr.name
                parts.append(f"{param.name}={value}")
            elif kind.startswith("*"):
                parts.append(f"{param.name}:{kind[1:]}")
        return " ".join(parts + [f"{name}={value}" for name, value in sorted(self.options().items())])

    def variant(self) -> tuple:
        """What Triton compiles one binary for: the specialization and the launch options."""
        _, _, specialization, _ = self.bind("sm_90")
        return self.name, repr(specialization), repr(sorted(self.options().items()))


def kernel_functions() -> dict:
    """``name -> kernel`` of every launched ``@triton.jit`` function of ``lorenza.kernels`` (named
    ``*_kernel``): compilable ``JITFunction``s, or the interpreter's stand-ins under
    ``TRITON_INTERPRET=1``."""
    import lorenza.kernels as package

    kernels = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        kernels.update({name: value for name, value in vars(module).items()
                        if name.endswith("_kernel") and callable(getattr(value, "run", None))})
    return kernels


def launched_kernels() -> list:
    """The kernels of :func:`kernel_functions`, each checked to be compilable here."""
    import triton

    kernels = list(kernel_functions().items())
    for name, kernel in kernels:
        if not isinstance(kernel, triton.runtime.jit.JITFunction):
            raise RuntimeError(f"{name} is not compilable here ({type(kernel).__name__}): "
                               "compile for a GPU in a process without TRITON_INTERPRET=1")
    return [kernel for _, kernel in kernels]


def _stand_in(arg):
    """A small tensor with a tensor argument's dtype and address alignment, which is all Triton's
    specialization reads of it: the recorded launches then keep no weight-sized memory alive."""
    if not isinstance(arg, torch.Tensor):
        return arg
    base = torch.empty(32 // arg.element_size(), dtype=arg.dtype)  # 64-byte aligned, as the original was
    return base[(arg.data_ptr() - base.data_ptr()) % 16 // arg.element_size():]


@contextlib.contextmanager
def recorded_launches():
    """Within the block, launching a kernel records it and runs nothing; yields the records."""
    launches = []

    def recorder(kernel):
        def run(*args, grid, warmup, **kwargs):
            launches.append(Launch(kernel, tuple(map(_stand_in, args)),
                                   {name: _stand_in(value) for name, value in kwargs.items()}))
        return run

    kernels = launched_kernels()
    for kernel in kernels:
        kernel.run = recorder(kernel)  # an instance attribute: KernelInterface.__getitem__ calls it
    try:
        yield launches
    finally:
        for kernel in kernels:
            del kernel.run


def distinct(launches) -> list:
    """One launch per compiled variant, in the order first seen."""
    seen = {}
    for launch in launches:
        seen.setdefault(launch.variant(), launch)
    return list(seen.values())


def _keys(count: int) -> list:
    """Philox keys as the optimizers make them: 63-bit, so Triton passes them as i64."""
    return [2**62 + 3 + j for j in range(count)]


def _codes8(shape) -> tuple:
    """Codes and block maxima of an 8-bit moment of ``shape``."""
    codes = torch.empty(shape, dtype=torch.uint8)
    return codes, torch.empty(-(-codes.numel() // 256))


def _projected_paths(W, ranks):
    from lorenza.kernels import adam8, perturb, projected_adam
    from lorenza.kernels.rank_update import MAX_STREAMS

    m, n = W.shape
    key_v, key_u = _keys(2)
    for rank, side in itertools.product(ranks, SIDES):
        if rank > min(m, n):
            continue
        moments = (m, rank) if side == "right" else (rank, n)
        basis = torch.empty((rank, n) if side == "right" else (m, rank))
        for residual, stored in ((False, torch.float32), (True, torch.float32), (False, torch.bfloat16)):
            # GaLore's update; Lorenza+'s out-of-subspace term; bfloat16 moments (state_bits=16)
            M, V = torch.empty(moments, dtype=stored), torch.empty(moments, dtype=stored)
            projected_adam.projected_adam_(W, W, M, V, basis, side, 1.0, scale=0.25, residual=residual,
                                           beta1=0.9, beta2=0.999, eps=1e-8, step_size=1e-3, decay=0.0)
            # per-layer mode: the gradient arrives projected already
            projected_adam.projected_adam_(W, torch.empty(moments), M, V, basis, side, 1.0, scale=0.25,
                                           residual=False, projected=True, beta1=0.9, beta2=0.999, eps=1e-8,
                                           step_size=1e-3, decay=0.0)
        # state_bits=8: the projection alone, then the 8-bit Adam kernel
        adam8.projected_adam8_(W, W, *_codes8(moments), *_codes8(moments), basis, side, 1.0, scale=0.25,
                               residual=False, beta1=0.9, beta2=0.999, eps=1e-8, step_size=1e-3, decay=0.0)
        for streams in range(1, MAX_STREAMS + 1):  # Lorenza's probes and ascent
            perturb.subspace_add_(W, basis, side, 1.0, [1.0] * streams, _keys(streams))
        perturb.low_rank_add_(W, 1.0, 1.0, rank, key_v, key_u=key_u)  # LOZO
        perturb.low_rank_add_(W, 1.0, 1.0, rank, key_v, left=torch.empty(m, rank))  # LOZO-M


def user_launches(models=tuple(LLAMA), ranks=RANKS, dtypes=WEIGHT_DTYPES) -> list:
    """The distinct launches of every op on the weights of ``models``, at each rank and dtype, with
    fp32 products in IEEE fp32 (PyTorch's default matmul precision) and in TF32 (``"high"``)."""
    from lorenza.kernels import adam8, perturb, philox, projected_adam
    from lorenza.kernels.rank_update import MAX_STREAMS

    shapes = sorted({shape for model in models for shape in weight_shapes(model)})
    vocab = {LLAMA[model][3] for model in models}
    matmul_precision = torch.get_float32_matmul_precision()
    with recorded_launches() as launches:
        try:
            for precision, shape, dtype in itertools.product(("highest", "high"), shapes, dtypes):
                torch.set_float32_matmul_precision(precision)
                W = torch.empty(shape, dtype=dtype)
                M, V = (torch.empty(shape, dtype=compute_dtype(dtype)) for _ in range(2))
                for step_size in (1e-3, torch.tensor(1e-3, dtype=torch.float64)):  # eager; traced (in memory)
                    projected_adam.adam_([W], [W], [M], [V], beta1=0.9, beta2=0.999, eps=1e-8,
                                         step_size=step_size, decay=0.0)
                    adam8.adam8_([W], [W], *([t] for t in _codes8(shape) + _codes8(shape)), beta1=0.9,
                                 beta2=0.999, eps=1e-8, step_size=step_size, decay=0.0)
                M16, V16 = (torch.empty(shape, dtype=torch.bfloat16) for _ in range(2))  # state_bits=16
                projected_adam.adam_([W], [W], [M16], [V16], beta1=0.9, beta2=0.999, eps=1e-8, step_size=1e-3,
                                     decay=0.0)
                for streams in range(1, MAX_STREAMS + 1):  # MeZO, AdaZeta, AdaZo-SAM
                    perturb.gaussian_add_(W, [1.0] * streams, _keys(streams))
                if shape[0] not in vocab:  # the embeddings and the head are never projected
                    _projected_paths(W, ranks)
        finally:
            torch.set_float32_matmul_precision(matmul_precision)
        for start in (0, 1):  # whole Philox counters, and a fill that starts mid-counter
            philox.normal_(torch.empty(4096), key=_keys(1)[0], start=start)
    return distinct(launches)


def one_per_config(launches) -> list:
    """One launch per ``config()``: the variants that differ only in which ints and pointers are
    16-divisible (their registers and spills barely differ) left out."""
    seen = {}
    for launch in launches:
        seen.setdefault((launch.name, launch.config()), launch)
    return list(seen.values())


def covering_subset(launches) -> list:
    """Few launches that together reach every kernel with every value each of its settings takes
    (each constexpr, pointer dtype and unit stride seen in ``launches``), chosen greedily: a
    settings-by-settings cover, not every combination of them."""
    features = [{(launch.name, token) for token in launch.config().split()} | {(launch.name, "")}
                for launch in launches]
    missing, chosen = set().union(*features), []
    while missing:
        best = max(range(len(launches)), key=lambda i: len(features[i] & missing))
        chosen.append(launches[best])
        missing -= features[best]
    return chosen


VARIANTS = {"all": list, "configs": one_per_config, "cover": covering_subset}

def _ptxas_report(log: str, kernel: str):
    """``(stack, spill stores, spill loads, registers)`` of ``kernel`` in ptxas's ``-v`` log."""
    found = re.search(rf"Function properties for {kernel}\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill "
                      rf"stores, (\d+) bytes spill loads.*?Used (\d+) registers", log, re.S)
    if found is None:
        raise RuntimeError(f"no ptxas report of {kernel} in the compile log: {log[:500]}")
    return tuple(map(int, found.groups()))


def compile_for(launch: Launch, target: str) -> dict:
    """Compile ``launch`` for ``target`` from scratch; what ptxas and Triton report about it.
    Raises Triton's error when it does not compile."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource

    backend, bound, specialization, options = launch.bind(target)
    kernel = launch.kernel
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.kwargs, bound, specialization,
                                                              options)
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Triton 3.9's notice that its FP-fusion default will change
        knobs.compilation.always_compile = True  # a cached binary has no ptxas log, and costs no time
        knobs.nvidia.dump_ptxas_log = True
        start = time.perf_counter()
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=backend.target,
                                  options=options.__dict__)
        seconds = time.perf_counter() - start
    stack, spill_stores, spill_loads, registers = _ptxas_report(log.getvalue(), launch.name)
    shared = compiled.metadata.shared
    return dict(kernel=launch.name, config=launch.config(), target=target, registers=registers,
                spill_stores=spill_stores, spill_loads=spill_loads, stack=stack, shared=shared,
                shared_limit=TARGETS[target][1], warps=compiled.metadata.num_warps,
                compile_s=round(seconds, 2))


def _compile_row(launch: Launch, target: str) -> dict:
    try:
        return compile_for(launch, target)
    except Exception as err:  # reported as a row: the caller decides what fails
        return dict(kernel=launch.name, config=launch.config(), target=target,
                    error=f"{type(err).__name__}: {str(err)[:2000]}")


_JOBS = []  # (launch, target) pairs, inherited by forked workers, which compile them by index


def _compile_job(index: int) -> dict:
    return _compile_row(*_JOBS[index])


def compile_table(launches, targets=tuple(TARGETS), workers: int = 1):
    """A row per launch and target, in that order; a launch that fails to compile gives a row with
    an ``error``. ``workers`` processes compile side by side (each compile is single-threaded)."""
    _JOBS[:] = list(itertools.product(launches, targets))
    if workers <= 1:
        yield from map(_compile_job, range(len(_JOBS)))
        return
    context = multiprocessing.get_context("fork")  # the workers inherit the recorded launches
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(_compile_job, range(len(_JOBS)))


def problems(rows) -> list:
    """What is wrong in a table: a launch that did not compile, shared memory above the target's
    limit, or registers spilled to local memory."""
    found = []
    for row in rows:
        where = f"{row['kernel']} [{row['config']}] on {row['target']}"
        if "error" in row:
            found.append(f"{where} does not compile: {row['error']}")
        elif row["shared"] > row["shared_limit"]:
            found.append(f"{where} needs {row['shared']} B of shared memory, over {row['shared_limit']}")
        elif row["spill_stores"] or row["spill_loads"]:
            found.append(f"{where} spills {row['spill_stores']} B per thread ({row['registers']} registers)")
    return found


_COMPILED = {}  # (variants, target) -> rows, made once per process (the report and the tests share them)


def in_child_process(variants: str = "cover", targets: str = ",".join(TARGETS), workers: int = 2,
                     timeout: float = 3600) -> list:
    """The rows of ``main`` run in a child process without ``TRITON_INTERPRET``, whatever this process
    runs (the test suite interprets the kernels on the CPU), target by target in the order of
    ``targets``. A target's rows are compiled once per process: what a compile reports (registers,
    spills, shared memory) does not change while the kernels do not."""
    wanted = targets.split(",")
    missing = [target for target in wanted if (variants, target) not in _COMPILED]
    if missing:
        rows = _compiled_in_child(variants, ",".join(missing), workers, timeout)
        for target in missing:
            _COMPILED[(variants, target)] = [row for row in rows if row["target"] == target]
    return [row for target in wanted for row in _COMPILED[(variants, target)]]


def _compiled_in_child(variants: str, targets: str, workers: int, timeout: float) -> list:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "bench.kernel_compiles", "--variants", variants, "--targets", targets,
               "--workers", str(workers)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where ``bench`` imports from
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=root)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", choices=tuple(VARIANTS), default="configs",
                        help="every variant, one per config, or the covering subset")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated, of " + ", ".join(TARGETS))
    parser.add_argument("--models", default=",".join(LLAMA), help="comma-separated, of " + ", ".join(LLAMA))
    parser.add_argument("--workers", type=int, default=1, help="compiles side by side")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    launches = VARIANTS[args.variants](user_launches(models=args.models.split(",")))
    for row in compile_table(launches, args.targets.split(","), args.workers):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
