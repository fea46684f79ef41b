"""The one precision rule of every op: arithmetic, moments and bases are float32, float64 for
float64 tensors (docs/algorithms.md, section 8). The Triton kernels follow it too."""
import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor of ``dtype`` is computed in: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
