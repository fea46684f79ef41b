"""Triton kernels of lorenza (filled by the fused-kernel issue).

They live inside the package rather than in a top-level ``kernels/`` folder: run from the
repository root, a top-level ``kernels`` shadows the PyPI package of that name, which
bitsandbytes (a galore-torch dependency) imports.
"""
