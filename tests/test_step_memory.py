"""The whole-step memory table (``bench/step_memory.py``): the meta device's count equals what the CPU
measures for every optimizer, and the parts show what each form promises."""
import pytest
import torch

from bench import step_memory
from bench.helpers import llama_shapes
from bench.live_bytes import LiveBytes

MODEL = "quick"  # a 2-layer LLaMA of 8000 tokens, width 256 (bench/helpers.py)


# Measured on the CPU too: every mechanism once. The 8-bit and per-layer forms of Lorenza and
# AdaZoSAM repeat what LowRankAdamW's forms and their own plain forms show, at 10 s each (the
# reference's noise on the CPU).
REPEATED = {"Lorenza per-layer", "Lorenza 8-bit", "Lorenza 8-bit per-layer", "AdaZoSAM 8-bit"}


@pytest.fixture(scope="module")
def counts():
    return {name: {"meta": step_memory.counted(name, MODEL)} | (
                {} if name in REPEATED else {"cpu": step_memory.step_memory(make, MODEL, "cpu")})
            for name, make in step_memory.candidates().items()}


def test_the_meta_count_equals_the_cpu_measurement(counts):
    measured = {name: both for name, both in counts.items() if "cpu" in both}
    assert len(measured) == len(counts) - len(REPEATED)
    # to a few constant tables that the CPU builds outside the dispatcher (the 8-bit maps: 1 KiB)
    differ = {name: both for name, both in measured.items()
              if any(abs(both["meta"][part] - both["cpu"][part]) > 4096 for part in both["meta"])}
    assert not differ
    assert sum(both["meta"] == both["cpu"] for both in measured.values()) > len(measured) / 2


def bf16_bytes(projected=None):
    return sum(2 * torch.Size(shape).numel() for shape, is_projected in llama_shapes(MODEL)
               if projected is None or is_projected == projected)


def test_adamw_holds_a_gradient_and_two_bf16_moments_per_weight(counts):
    adamw = counts["AdamW"]["meta"]
    scalars = 4 * len(llama_shapes(MODEL))  # the step counts, one float32 each
    assert adamw["weights"] == adamw["gradients"] == bf16_bytes()
    assert adamw["state"] == 2 * bf16_bytes() + scalars
    assert adamw["peak"] == sum(adamw[part] for part in step_memory.PARTS)


@pytest.mark.parametrize("name", ["LowRankAdamW", "Lorenza", "ProjFactor"])
def test_per_layer_keeps_one_projected_gradient_and_8_bits_shrink_the_state(counts, name):
    plain, layered = counts[name]["meta"], counts[f"{name} per-layer"]["meta"]
    eight, both = counts[f"{name} 8-bit"]["meta"], counts[f"{name} 8-bit per-layer"]["meta"]
    assert plain["gradients"] == bf16_bytes()
    largest = max(2 * torch.Size(shape).numel() for shape, projected in llama_shapes(MODEL) if projected)
    beyond_plain = layered["gradients"] - bf16_bytes(projected=False)
    assert 0 <= beyond_plain <= largest + 4 * 1024 * 1024  # one full gradient and the r-sized sums at most
    assert layered["state"] == plain["state"] and both["state"] == eight["state"]
    assert eight["state"] < 0.55 * plain["state"]
    assert both["peak"] < eight["peak"] and layered["peak"] < plain["peak"]
    assert eight["peak"] < plain["peak"]
    # no float32 copy of a whole 8-bit moment: the 8-bit step's extra temporaries (a chunk's codes,
    # indices and floats) stay below one such copy of the largest moment, the embeddings'
    largest_moment = max(4 * torch.Size(shape).numel() for shape, projected in llama_shapes(MODEL)
                         if not projected)
    assert eight["temporaries"] < plain["temporaries"] + largest_moment, (eight, plain)


def test_galore_per_layer_frees_the_gradients(counts):
    standard, layered = counts["GaLoreAdamW8bit"]["meta"], counts["GaLoreAdamW8bit per-layer"]["meta"]
    assert layered["gradients"] < standard["gradients"] / 2


def test_live_bytes_counts_storages_until_freed_and_answers_meta_reads():
    with LiveBytes() as tally:
        a = torch.empty(1000, device="meta")
        b = a[10:]  # a view: no new storage
        c = torch.empty(500, device="meta")
        del a, c
        d = torch.empty(100, device="meta")
        assert bool(torch.isfinite(d).all()) and float(d.sum()) != float(d.sum())
    assert tally.peak == 4 * 1500 and tally.total == 4 * 1100
    del b
    assert tally.total == 4 * 100
