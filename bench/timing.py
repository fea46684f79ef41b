"""Timing and table helpers shared by the benchmarks."""
import statistics
import time

import torch

TABLES = []  # every table printed in this run, as (title, headers, rows), for the CSV/JSON report


def _sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_seconds(fn, reps: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def print_table(title: str, headers, rows) -> None:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else f"{c:,.4g}" if isinstance(c, float)
                                            else f"{c:,}" for c in row] for row in rows]
    TABLES.append((title, list(headers), [list(row) for row in rows]))
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
