"""LLaMA shapes the benchmarks and the GPU compile checks use: ``name -> (hidden, intermediate,
layers, vocabulary)``, the configurations of GaLore's pre-training experiments (60M to 1B) and of
LLaMA-7B."""
LLAMA = {"60m": (512, 1376, 8, 32000), "130m": (768, 2048, 12, 32000), "350m": (1024, 2736, 24, 32000),
         "1b": (2048, 5461, 24, 32000), "7b": (4096, 11008, 32, 32000)}


def weight_shapes(name: str) -> list:
    """The distinct 2-D weights of one model: attention, MLP in and out, the embeddings."""
    d, f, _, vocab = LLAMA[name]
    return [(d, d), (f, d), (d, f), (vocab, d)]
