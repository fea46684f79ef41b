"""What the README quotes is the kept output of a run of the code (bench/results/), and what it links
exists."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RESULTS = ROOT / "bench" / "results"
QUOTED_RUNS = ["main_job-cpu-2core-*.txt", "finetune_minilm-cpu-2core-*.txt", "cpu-2core-*.txt",
               "fsdp2-cpu-2core-*.txt", "zo-scaling-cpu-2core-*.txt", "hf_trainer-cpu-2core-*.txt",
               "main_job_forms-cpu-2core-*.txt", "step_memory-60m-cpu-2core-*.txt",
               "step_memory-7b-meta-*.txt"]


@pytest.mark.parametrize("pattern", QUOTED_RUNS)
def test_the_readme_quotes_the_latest_kept_run_whole(pattern):
    kept = max(RESULTS.glob(pattern))
    assert f"```\n{kept.read_text().strip()}\n```" in README, f"the README does not quote {kept.name} whole"


def test_every_file_the_readme_names_exists():
    named = set(re.findall(r"\b((?:bench|docs|examples|lorenza|tests|csrc)/[\w./-]+\.\w+)", README))
    missing = [path for path in named if not (ROOT / path).exists()]
    assert named and not missing, missing


def test_the_readme_quotes_the_summary_of_the_latest_gpu_compile_table():
    kept = max(RESULTS.glob("gpu-compile-cpu-2core-*.txt"), default=None)
    assert kept is not None, "no GPU compile table is kept in bench/results/"
    summary = "\n".join(kept.read_text().strip().splitlines()[-2:])
    assert f"```\n{summary}\n```" in README, f"the README does not quote the end of {kept.name}"
