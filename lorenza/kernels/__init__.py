"""Triton kernels of lorenza: tensors in, tensors out. The op layer (``lorenza.ops``) decides when
they run; nothing here imports anything of lorenza above ``kernels`` and ``reference`` (whose
precision rule the kernels follow).

They live inside the package rather than in a top-level ``kernels/``: run from the repository
root, a top-level ``kernels`` shadows the PyPI package of that name, which bitsandbytes (a
galore-torch dependency) imports.
"""
