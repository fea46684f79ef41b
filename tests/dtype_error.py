"""Tolerances tied to the dtype (docs/design.md, conventions) for comparing a kernel with the reference."""
import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def assert_matches_reference(result, reference, truth=None, *, rtol=1e-5, what="result"):
    """fp32/fp64: ``result`` equals ``reference`` to ``rtol`` of the largest magnitude. bf16/fp16:
    ``result``'s error against ``truth`` (the same computation in higher precision) is no worse than
    twice the reference's own error."""
    result, reference = result.detach().double().cpu(), reference.detach().double().cpu()
    assert torch.isfinite(result).all(), f"{what}: non-finite values"
    if truth is None:
        scale = reference.abs().max().clamp_min(1e-30)
        error = (result - reference).abs().max()
        assert error <= rtol * scale, f"{what}: max error {error:.3g} exceeds {rtol} x {scale:.3g}"
        return
    truth = truth.detach().double().cpu()
    own, ref_error = (result - truth).abs().max(), (reference - truth).abs().max()
    assert own <= 2 * ref_error + 1e-30, f"{what}: error {own:.3g} vs the reference's {ref_error:.3g}"
