"""What the tests and the benchmarks share: transcriptions of the papers' official loops
(``official``), the oracles and baselines lorenza is compared with. Not imported by ``lorenza``."""
