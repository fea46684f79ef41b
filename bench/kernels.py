"""Each Triton kernel against its baseline in the same run (docs/performance.md): median ms, GB/s of
the byte floor, % of the measured copy bandwidth, and the speed-up.

The kernels are timed on CUDA tensors. On the CPU they only run in Triton's interpreter, whose
timings mean nothing: ``run(device="cpu")`` is there so the tests can check the script end to end.
"""
import os
import warnings

import torch

from lorenza import ops
from lorenza import projector as proj

from .helpers import copy_bandwidth, median_seconds, print_table

SHAPES = ((4096, 4096), (4096, 11008))
QUICK_SHAPES = ((127, 300),)


def timer(device):
    if device.type == "cuda":
        import triton.testing
        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    return lambda fn: median_seconds(fn, reps=2, warmup=1)


def galore_step(W, G, rank):
    """galore-torch's GaLoreAdamW step with its SVD done beforehand (the basis is reused)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from galore_torch import GaLoreAdamW
    opt = GaLoreAdamW([{"params": [W], "rank": rank, "update_proj_gap": 10**9, "scale": 0.25,
                        "proj_type": "std"}], lr=1e-3, no_deprecation_warning=True)
    W.grad = G
    opt.step()  # computes the basis once
    return opt.step


def cases(W, G, rank, device):
    """``{name: (ours, baseline, floor bytes)}`` for one weight shape."""
    m, n = W.shape
    nbytes = W.numel() * W.element_size()
    side = proj.side_for(W.shape, "std")
    basis = proj.compute_basis(G, rank, side, "svd", 0)
    projection = proj.Projection(basis, side, "svd", W.shape)
    M, V = (torch.zeros(projection.subspace_shape(), device=device) for _ in range(2))
    U, Vf = torch.randn(m, rank, device=device), torch.randn(n, rank, device=device)
    Z = torch.randn(projection.subspace_shape(), device=device)
    W_bf16 = W.to(torch.bfloat16)
    M_full, V_full = torch.zeros_like(W), torch.zeros_like(W)
    plain = dict(beta1=0.9, beta2=0.999, eps=1e-6, step_size=1e-3, decay=0.0)
    hyper = dict(scale=0.25, residual=False, beta1=0.9, beta2=0.999, eps=1e-6, step_size=1e-3, decay=0.0)
    result = {
        "gaussian perturb fp32 (vs torch.normal + add_)":
            (lambda: ops.gaussian_add_(W, 1e-3, 7),
             lambda: W.add_(torch.normal(0, 1, size=W.shape, device=device), alpha=1e-3), 2 * nbytes),
        "gaussian perturb bf16 (vs torch.normal + add_)":
            (lambda: ops.gaussian_add_(W_bf16, 1e-3, 7),
             lambda: W_bf16.add_(torch.normal(0, 1, size=W.shape, device=device, dtype=torch.bfloat16),
                                 alpha=1e-3), nbytes),
        "LOZO U V^T, r=2 (vs W += eps U V^T)":
            (lambda: ops.low_rank_add_(W, 1e-3, 1.0, 2, 8, key_u=9),
             lambda: W.add_(U[:, :2] @ Vf[:, :2].T, alpha=1e-3), 2 * nbytes),
        f"Lorenza lift(Z), r={rank} (vs W += lift(Z))":
            (lambda: ops.subspace_add_(W, projection, [1e-3], [10]),
             lambda: W.add_(projection.lift(Z), alpha=1e-3), 2 * nbytes),
        f"projected Adam, r={rank} (vs GaLoreAdamW, SVD excluded)":
            (lambda: ops.projected_adam_(W, G, M, V, projection, **hyper),
             galore_step(W.clone().requires_grad_(), G, rank), 3 * nbytes),
        f"Adam, multi-tensor (vs torch AdamW {'fused' if device.type == 'cuda' else 'foreach'})":
            (lambda: ops.adam_([W], [G], [M_full], [V_full], **plain),
             torch_adam_step(W.clone().requires_grad_(), G, device), 7 * nbytes),
    }
    return result


def torch_adam_step(W, G, device):
    W.grad = G
    opt = torch.optim.AdamW([W], lr=1e-3, **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    return opt.step


def run(device="cuda", shapes=SHAPES, rank=128, allow_interpreter=False):
    device = torch.device(device)
    if device.type != "cuda" and not allow_interpreter:
        print("\nTriton kernels: skipped on cpu (they run there only in the interpreter; use --device cuda)")
        return {}
    previous = os.environ.get("LORENZA_BACKEND")
    os.environ["LORENZA_BACKEND"] = "triton"
    try:
        time_of = timer(device)
        bandwidth = copy_bandwidth(device)
        rows, results = [], {}
        for shape in shapes:
            gen = torch.Generator(device=device).manual_seed(0)
            W = torch.randn(shape, device=device, generator=gen) * 0.02
            G = torch.randn(shape, device=device, generator=gen) * 1e-3
            for name, (ours, baseline, floor) in cases(W, G, min(rank, min(shape) - 1), device).items():
                t_ours, t_base = time_of(ours), time_of(baseline)
                results[(name, shape)] = (t_ours, t_base, floor)
                rows.append([name, f"{shape[0]}x{shape[1]}", t_ours * 1e3, t_base * 1e3, floor / t_ours / 1e9,
                             100 * floor / t_ours / bandwidth, t_base / t_ours])
    finally:
        if previous is None:
            os.environ.pop("LORENZA_BACKEND")
        else:
            os.environ["LORENZA_BACKEND"] = previous
    where = torch.cuda.get_device_name() if device.type == "cuda" else "the interpreter: timings meaningless"
    print_table(f"Triton kernels on {device.type} ({where}), copy bandwidth {bandwidth / 1e9:.1f} GB/s, fp32 "
                "unless named", ["kernel (baseline)", "shape", "ms", "baseline ms", "GB/s (floor bytes)",
                                 "% of copy", "x baseline"], rows)
    return results
