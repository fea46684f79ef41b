"""``lorenza.testing.processes.run``, the harness of the gloo tests and benchmarks."""
import torch

from lorenza.testing.processes import run


def large_result(rank, world_size):
    return torch.full((1 << 18,), float(rank))  # 1 MiB, beyond a pipe's 64 KiB buffer


def test_results_larger_than_a_pipe_buffer_come_back():
    # read only after the processes ended, each would block in put() until read: a deadlock
    results = run(large_result, 2, timeout=60)
    assert [float(r[0]) for r in results] == [0.0, 1.0] and all(r.numel() == 1 << 18 for r in results)
