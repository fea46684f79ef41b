"""Pure-PyTorch implementations of every op: the fallback backend and the test oracle.

Self-contained: these modules import torch, the standard library and each other, nothing else of
lorenza, so that the oracle can never be served by a backend it is meant to check.
"""
