"""Models built in code (no download) that the benchmarks run."""
from torch import nn

# (vocab, hidden, feed-forward, layers, heads): the LLaMA-60M widths (GaLore's config), and a quick one
MODELS = {"60m": (32000, 512, 1376, 8, 8), "quick": (8000, 256, 688, 2, 4)}


class Encoder(nn.Module):
    """Token embedding, a stack of PyTorch's Transformer encoder layers, an untied output head."""

    def __init__(self, vocab, hidden, ffn, layers, heads):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens):
        return self.head(self.layers(self.embed(tokens)))
