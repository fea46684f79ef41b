"""``python -m bench [--quick] [--device cpu|cuda] [--model 60m|130m|350m|1b|7b|quick] [--out DIR]``

Runs the rSVD, optimizer-step, ProjFactor, zeroth-order, FSDP2 and zeroth-order data-parallel (gloo
processes on the CPU) and (on CUDA) Triton-kernel benchmarks, each figure beside its baseline
measured in the same run, compiles the Triton kernels for sm_80 and sm_90 (registers, spills,
shared memory, compile time; no GPU needed), and counts the whole-step memory of every optimizer on
LLaMA shapes (``step_memory.py``, its picture in ``DIR/step_memory-<date>.png``); prints the
tables, then writes them with the machine, versions and date to ``DIR/<machine>-<date>.json`` and
``.csv``, and plots (time vs shape, memory per optimizer) to ``.png``. ``DIR`` is ``runs/bench``
(ignored by git) unless ``--out`` says otherwise.
"""
import argparse
import csv
import datetime
import json
import pathlib
import platform
import time

import torch

import lorenza

from . import (fsdp, gpu_compile, kernels, optim_step, plots, projfactor, rsvd, step_memory, zeroth_order,
               zeroth_order_scaling)
from .helpers import LLAMA, TABLES


def sections(args) -> dict:
    """``{name: run}`` in the order they run."""
    if args.quick:
        return {
            "rsvd": lambda: rsvd.run(shapes=((256, 688),), rank=32, reps=2),
            "optimizer step": lambda: optim_step.run(model=args.model or "60m", rank=32, gap=3,
                                                     device=args.device),
            "ProjFactor": lambda: projfactor.run(quick=True),
            "zeroth-order": lambda: zeroth_order.run(model="quick", reps=2),
            "FSDP2": lambda: fsdp.run(model="quick", rank=32, steps=5),
            "zeroth-order scaling": lambda: zeroth_order_scaling.run(context=16, ranks=(1, 2), global_batch=4,
                                                                     per_rank=2, steps=2),
            "Triton kernels": lambda: kernels.run(args.device, shapes=kernels.QUICK_SHAPES, rank=32),
            "GPU compile": lambda: gpu_compile.run(variants="cover", targets="sm_90"),
            "whole-step memory": lambda: step_memory_plot(step_memory.run(models=("quick",), measured=()),
                                                          args),
        }
    return {
        "rsvd": rsvd.run,
        "optimizer step": lambda: optim_step.run(model=args.model or "60m", device=args.device),
        "ProjFactor": projfactor.run,
        "zeroth-order": zeroth_order.run,
        "FSDP2": fsdp.run,
        "zeroth-order scaling": zeroth_order_scaling.run,
        "Triton kernels": lambda: kernels.run(args.device),
        "GPU compile": gpu_compile.run,
        "whole-step memory": lambda: step_memory_plot(step_memory.run(), args),
    }


def step_memory_plot(results: dict, args) -> None:
    """The whole-step memory table's picture, ``DIR/step_memory-<date>.png``."""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"step_memory-{datetime.date.today()}.png"
    if step_memory.plot(results, path, f"counted on the meta device, {datetime.date.today()}"):
        print(f"wrote {path}")


def machine(device: str) -> dict:
    info = dict(machine=platform.node(), processor=platform.processor() or platform.machine(),
                cpus=torch.get_num_threads(), device=device, date=str(datetime.date.today()),
                torch=torch.__version__, lorenza=lorenza.__version__)
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def write_report(out: pathlib.Path, info: dict) -> list:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{info.get('gpu', info['machine']).replace(' ', '-')}-{info['date']}"
    tables = [dict(title=title, headers=headers, rows=rows) for title, headers, rows in TABLES]
    stem.with_suffix(".json").write_text(json.dumps(dict(machine=info, tables=tables), indent=1, default=str))
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"{key}={value}" for key, value in info.items()])
        for table in tables:
            writer.writerow([])
            writer.writerow([table["title"]])
            writer.writerow(table["headers"])
            writer.writerows(table["rows"])
    written = [stem.with_suffix(".json"), stem.with_suffix(".csv")]
    if plots.plot(TABLES, stem.with_suffix(".png"), f"{info.get('gpu', info['processor'])}, {info['date']}"):
        written.append(stem.with_suffix(".png"))
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions (about a minute)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the optimizer steps and the Triton kernels run (the kernels need cuda)")
    parser.add_argument("--model", choices=[*LLAMA, "quick"],
                        help="LLaMA shapes of the optimizer step (quick: a 2-layer LLaMA of width 256)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/bench"))
    args = parser.parse_args(argv)
    info = machine(args.device)
    print(f"lorenza {info['lorenza']}, torch {info['torch']}, triton {info['triton']}, {info['machine']} "
          f"({info.get('gpu', info['processor'])}), {info['date']}")
    TABLES.clear()
    todo = sections(args)
    for number, (name, run) in enumerate(todo.items(), start=1):
        print(f"\n[{number}/{len(todo)}] {name} ...", flush=True)  # a line per section, in a log too
        start = time.perf_counter()
        run()
        print(f"[{number}/{len(todo)}] {name}: {time.perf_counter() - start:.0f} s", flush=True)
    for path in write_report(args.out, info):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
