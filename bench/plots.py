"""The report's picture: time against shape (rSVD and its baselines; the kernels' speed-ups on a GPU)
and memory per optimizer (state and step peak), drawn from the tables the run printed."""


def _table(tables, prefix):
    return next(((headers, rows) for title, headers, rows in tables if title.startswith(prefix)), None)


def _column(headers, rows, name):
    i = headers.index(name)
    return [row[i] for row in rows]


def _number(value):
    return value if isinstance(value, (int, float)) else 0.0


def plot(tables, path, subtitle: str) -> bool:
    """Write the PNG; False (and a note) when matplotlib is missing or there is nothing to draw."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    panels = [p for p in (_table(tables, "rsvd"), _table(tables, "optimizer step"), _table(tables, "Triton"))
              if p is not None]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    axes = iter(axes[0])
    rsvd = _table(tables, "rsvd")
    if rsvd:
        ax, (headers, rows) = next(axes), rsvd
        shapes = list(dict.fromkeys(_column(headers, rows, "shape")))
        for impl in dict.fromkeys(_column(headers, rows, "impl")):
            ax.plot(shapes, [row[2] for row in rows if row[1] == impl], "o-", label=f"lorenza {impl}")
        first = {row[0]: row for row in rows}
        ax.plot(shapes, [first[s][3] for s in shapes], "s--", label="torch.svd_lowrank")
        ax.plot(shapes, [first[s][4] for s in shapes], "s--", label="torch.linalg.svd")
        ax.set(yscale="log", xlabel="matrix shape", ylabel="ms (log)", title="rSVD time vs shape")
        ax.legend()
    step = _table(tables, "optimizer step")
    if step:
        ax, (headers, rows) = next(axes), step
        names = _column(headers, rows, "optimizer")
        state = [_number(v) for v in _column(headers, rows, "state MiB")]
        peak = [_number(v) for v in _column(headers, rows, "step peak extra MiB")]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], state, width=0.4, label="optimizer state")
        ax.bar([x + 0.2 for x in xs], peak, width=0.4, label="peak extra during a step")
        ax.set_xticks(list(xs), names, rotation=25, ha="right", fontsize=8)
        ax.set(ylabel="MiB", title="memory per optimizer (LLaMA shapes)")
        ax.legend()
    kernels = _table(tables, "Triton")
    if kernels:
        ax, (headers, rows) = next(axes), kernels
        labels = [f"{k.split(' (')[0]}\n{s}" for k, s in zip(_column(headers, rows, "kernel (baseline)"),
                                                             _column(headers, rows, "shape"))]
        ax.barh(labels, [_number(v) for v in _column(headers, rows, "x baseline")])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set(xlabel="speed-up over the baseline", title="Triton kernels")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(subtitle)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
