"""rSVD (C++ and PyTorch reference) against torch.linalg.svd and torch.svd_lowrank."""
import torch

from lorenza.ops import backend
from lorenza.random import Stream, stream_key

from .helpers import median_seconds, print_table


def run(shapes=((1024, 2752), (2048, 5504)), rank=128, oversample=8, power_iters=2, reps=3):
    key = stream_key(0, Stream.RSVD)
    rows = []
    for m, n in shapes:
        A = torch.randn(m, n) @ torch.diag(torch.linspace(1, 0.01, n))  # a decaying spectrum
        svd = median_seconds(lambda: torch.linalg.svd(A, full_matrices=False), reps=1, warmup=0)
        lowrank = median_seconds(lambda: torch.svd_lowrank(A, q=rank + oversample, niter=power_iters), reps)
        impls = {"reference": backend.implementation("rsvd", backend.TORCH)}
        if backend.ext() is not None:
            impls["C++"] = backend.implementation("rsvd", backend.EXT)
        for name, fn in impls.items():
            t = median_seconds(lambda: fn(A, rank, oversample, power_iters, key), reps)
            rows.append([f"{m}x{n}", name, t * 1e3, lowrank * 1e3, svd * 1e3, svd / t, lowrank / t])
    print_table(f"rsvd rank {rank}, oversample {oversample}, {power_iters} power iterations "
                f"({torch.get_num_threads()} threads)",
                ["shape", "impl", "ms", "svd_lowrank ms", "linalg.svd ms", "x vs svd", "x vs svd_lowrank"],
                rows)
    return rows
