"""The benchmark runs and reports what it promises (figures are checked where they are not timings)."""
import math

from conftest import DEVICE, import_from_checkout, requires_triton

import_from_checkout(".", "bench")
from bench import projfactor, zeroth_order  # noqa: E402  (the package of the checkout, imported above)


def test_zeroth_order_benchmark_reports_time_memory_and_state(capsys):
    results = zeroth_order.run(model="quick", reps=1)
    out = capsys.readouterr().out
    assert "x vs official" in out and "peak / largest tensor" in out
    assert set(results) == {"official MeZO", "MeZO", "official LOZO", "LOZO", "LOZO-M"}
    for seconds, _, state in results.values():
        assert math.isfinite(seconds) and seconds > 0 and state >= 0
    assert results["MeZO"][2] == 0 and results["LOZO"][2] == 0  # nothing stored: V is regenerated
    assert results["LOZO-M"][2] > 0 and results["official LOZO"][2] > 0
    peaks = {name: peak for name, (_, peak, _) in results.items()}
    if peaks["MeZO"] is not None:  # Linux: the official loops allocate weight-sized temporaries
        vocab, hidden = zeroth_order.MODELS["quick"][:2]
        largest = vocab * hidden * 4  # the embedding (and the head)
        for name in ("MeZO", "LOZO"):
            baseline = peaks[f"official {name}"]
            assert baseline > 2 * largest and peaks[name] < baseline / 3, peaks


def test_projfactor_benchmark_reports_state_time_and_the_per_layer_saving(capsys):
    results = projfactor.run_state_and_time(model="60m", splits=((1, 16), (4, 4)), gap=2)
    assert "state / AdamW" in capsys.readouterr().out
    states = {name: nbytes for name, (_, _, nbytes, _) in results.items()}
    assert states["ProjFactor c=1 r=16"] == states["ProjFactor c=4 r=4"] < states["torch AdamW (fused)"] / 2
    memory = projfactor.run_per_layer_memory(model="quick", rank=16, reps=1)
    assert "saved MiB" in capsys.readouterr().out
    assert set(memory) == {"at the step", "per-layer"}
    for seconds, peak, projected_bytes in memory.values():  # the peaks themselves are too noisy to compare
        assert seconds > 0 and projected_bytes > 0 and (peak is None or peak > 0)


@requires_triton
def test_kernel_benchmark_reports_every_kernel_against_its_baseline(capsys):
    from bench import kernels
    results = kernels.run(device=DEVICE, shapes=kernels.QUICK_SHAPES, rank=7, allow_interpreter=True)
    out = capsys.readouterr().out
    assert "% of copy" in out and "x baseline" in out
    assert len(results) == 6 and any("projected Adam" in name for name, _ in results)
    for ours, baseline, floor in results.values():
        assert ours > 0 and baseline > 0 and floor > 0
    assert "skipped on cpu" in (kernels.run(device="cpu") or capsys.readouterr().out)


def test_python_m_bench_quick_writes_the_report(tmp_path, capsys):
    import json

    from bench.__main__ import main
    main(["--quick", "--model", "quick", "--out", str(tmp_path)])  # the smallest LLaMA shows the report
    out = capsys.readouterr().out
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".csv", ".json", ".png", ".png"], written
    assert len(list(tmp_path.glob("step_memory-*.png"))) == 1
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {"machine", "torch", "triton", "date", "device"} <= set(report["machine"])
    titles = [t["title"] for t in report["tables"]]
    for prefix in ("rsvd", "optimizer step", "ProjFactor step", "zeroth-order step", "Whole-step memory"):
        assert any(title.startswith(prefix) for title in titles), titles
    step = next(t for t in report["tables"] if t["title"].startswith("optimizer step"))
    assert {"median step ms", "GB/s (floor bytes)", "% of copy", "state MiB", "step peak extra MiB",
            "state / GaLore"} <= set(step["headers"])
    names = [row[0] for row in step["rows"]]
    assert "torch AdamW (foreach)" in names and "galore_torch GaLoreAdamW" in names
    for table in report["tables"]:
        for row in table["rows"]:
            numbers = [v for v in row if isinstance(v, (int, float))]
            assert numbers and all(math.isfinite(v) for v in numbers), (table["title"], row)
    assert "wrote" in out and "LowRankAdamW" in next(tmp_path.glob("*.csv")).read_text()
    scaling = next(t for t in report["tables"] if t["title"].startswith("zeroth-order data parallel"))
    column = {header: i for i, header in enumerate(scaling["headers"])}
    sent = {(row[0], row[1], row[column["ranks"]]): row[column["bytes/step"]] for row in scaling["rows"]}
    assert sent[("MeZO", "strong", 1)] == 0 and sent[("MeZO", "strong", 2)] == 16  # one float64 pair a query
    assert sent[("LOZO", "weak", 2)] == 16 and sent[("AdaZeta", "queries", 2)] == 4 * 16
