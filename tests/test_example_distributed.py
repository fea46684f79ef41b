"""The README's ``torchrun`` examples run as written, smaller: FSDP2 on 2 CPU ranks saves a DCP
checkpoint, and a run resumes from it on 3 ranks and under DDP; LOZO the same on FSDP2, and AdaZeta
with its queries split over 2 ranks prints one process's losses."""
import os
import re
import subprocess
import sys

from conftest import ROOT

README_TEXT = (ROOT / "README.md").read_text()


def torchrun(ranks: int, *args: str) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(ROOT / "examples" / "train_distributed.py"), "--batch", "12", "--update-gap", "2", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def losses(out: str) -> dict:
    return {int(step): float(loss) for step, loss in re.findall(r"step (\d+): loss ([\d.]+)", out)}


def test_readme_torchrun_example_trains_saves_and_resumes(tmp_path):
    assert "torchrun --nproc_per_node 2 examples/train_distributed.py --engine fsdp" in README_TEXT
    out = torchrun(2, "--engine", "fsdp", "--optimizer", "Lorenza", "--steps", "3", "--out", str(tmp_path))
    first = losses(out)
    assert sorted(first) == [1, 2, 3] and "checkpoint in" in out
    assert first[1] > 5.0  # a byte-level model starts near ln 256 = 5.55
    resumed = losses(torchrun(3, "--engine", "fsdp", "--optimizer", "Lorenza", "--steps", "2", "--resume",
                              "--out", str(tmp_path)))
    assert sorted(resumed) == [4, 5] and resumed[4] < first[1]
    on_ddp = losses(torchrun(2, "--engine", "ddp", "--optimizer", "Lorenza", "--steps", "1", "--resume",
                             "--out", str(tmp_path)))
    assert sorted(on_ddp) == [6]


def test_readme_torchrun_example_runs_the_zeroth_order_optimizers(tmp_path):
    assert "examples/train_distributed.py --engine fsdp --optimizer LOZO" in README_TEXT
    assert "--optimizer AdaZeta --split-queries" in README_TEXT
    first = losses(torchrun(2, "--engine", "fsdp", "--optimizer", "LOZO", "--steps", "2",
                            "--out", str(tmp_path)))
    resumed = losses(torchrun(3, "--engine", "fsdp", "--optimizer", "LOZO", "--steps", "1", "--resume",
                              "--out", str(tmp_path)))
    assert sorted(first) == [1, 2] and sorted(resumed) == [3] and first[1] > 5.0
    # AdaZeta's 2 ranks sharing out its 1, 1, 2 and 3 queries print one process's losses
    split = [losses(torchrun(ranks, "--engine", "ddp", "--optimizer", "AdaZeta", "--split-queries", "--steps",
                             "4", "--out", str(tmp_path / f"split{ranks}"))) for ranks in (2, 1)]
    assert sorted(split[0]) == [1, 2, 3, 4] and split[0] == split[1]
