"""Pure-PyTorch implementations of every kernel: the fallback backend and the test oracle."""
