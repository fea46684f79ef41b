"""Triton kernels of lorenza (installed as ``lorenza.kernels``)."""
