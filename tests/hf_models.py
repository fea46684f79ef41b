"""The small Hugging Face model of the Trainer and param-group tests, built from a config (nothing
downloaded)."""
import torch

VOCAB = 64


def tiny_llama(layers: int = 2, tie: bool = False):
    import transformers

    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                      tie_word_embeddings=tie)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)
