"""What the tests and the benchmarks share: transcriptions of the papers' official loops
(``official``), the oracles and baselines lorenza is compared with; LLaMA shapes (``llama``); gloo
processes (``processes``) and counted collectives (``collectives``). Not imported by ``lorenza``."""
