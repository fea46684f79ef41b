"""What the tests and the benchmarks share: transcriptions of the papers' official loops
(``official``), the oracles and baselines lorenza is compared with; the Triton kernels compiled for
sm_80 and sm_90 without a GPU (``gpu_compile``); LLaMA shapes (``llama``). Not imported by
``lorenza``."""
