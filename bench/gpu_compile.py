"""What each Triton kernel costs on the GPU before it runs: registers, spills, shared memory and
compile time per kernel configuration and target (sm_80, sm_90), from Triton's compiler and the
ptxas in its wheel, on any machine (docs/performance.md, "Compiled for the GPU, checked without one").

The compiles run in a child process without ``TRITON_INTERPRET`` (bench.kernel_compiles), so
the launch heuristics are the GPU's whatever this process runs; it needs Triton, not a GPU.
"""
import os

from .kernel_compiles import in_child_process, problems

from .helpers import print_table

HEADERS = ("kernel", "config", "target", "warps", "registers", "spill stores B", "stack B", "shared B",
           "compile s")


def run(variants: str = "configs", targets: str = "sm_80,sm_90") -> list:
    rows = in_child_process(variants, targets, workers=max(1, min(8, os.cpu_count() or 1)))
    table = [(r["kernel"], r["config"], r["target"], r.get("warps", ""), r.get("registers", ""),
              r.get("spill_stores", ""), r.get("stack", ""), r.get("shared", ""),
              r.get("compile_s", r.get("error", ""))) for r in rows]
    title = f"GPU compile: the Triton kernels for {targets} ({variants}: {len(rows)} compiles)"
    print_table(title, HEADERS, table)
    slowest = max(rows, key=lambda r: r.get("compile_s", 0))
    print("\n".join(problems(rows)) or "every launch compiles, within shared memory, without spills")
    print(f"slowest compile {slowest.get('compile_s')} s ({slowest['kernel']}, {slowest['target']}); "
          f"all {sum(r.get('compile_s', 0) for r in rows):.0f} s")
    return rows
