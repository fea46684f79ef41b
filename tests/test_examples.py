import math
import pathlib
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def test_main_job_runs_end_to_end(capsys):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import train_tiny_lm
    finally:
        sys.path.remove(str(EXAMPLES))
    results = train_tiny_lm.main(["--steps", "3", "--batch", "4", "--context", "16", "--rank", "8"])
    out = capsys.readouterr().out
    assert "stdlib source" in out
    for name in ("AdamW", "LowRankAdamW", "Lorenza"):
        assert name in out
        assert math.isfinite(results[name]["val"]) and results[name]["ms"] > 0
    assert results["LowRankAdamW"]["state"] < results["AdamW"]["state"]
    assert results["Lorenza"]["state"] == results["LowRankAdamW"]["state"]
