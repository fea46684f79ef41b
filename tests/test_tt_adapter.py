import copy
import math
import pickle

import pytest
import torch

from lorenza.adapters import TTAdapter, TTLinear, add_tt_adapters, factorize


@pytest.mark.parametrize("n, order, expected", [
    (4096, 3, [16, 16, 16]), (64, 3, [4, 4, 4]), (384, 3, [8, 8, 6]), (768, 2, [32, 24]), (97, 3, [97, 1, 1]),
    (1, 2, [1, 1]), (1000, 3, [10, 10, 10]),
])
def test_factorize(n, order, expected):
    assert factorize(n, order) == expected


def randomized(layer):
    with torch.no_grad():
        for core in layer.cores:
            core.normal_()
        if layer.bias is not None:
            layer.bias.normal_()
    return layer


@pytest.mark.parametrize("shape, rank, order", [((384, 64), 5, 3), ((127, 30), 4, 2), ((7, 5), 5, 3),
                                                 ((64, 4096), 5, 3), ((30, 127), 2, 1)])
def test_the_dense_matrix_of_the_train_is_what_the_forward_applies(shape, rank, order):
    layer = randomized(TTLinear(*shape, tt_rank=rank, order=order).double())
    x = torch.randn(2, 3, shape[0], dtype=torch.float64)
    dense = layer.to_dense()
    assert dense.shape == shape
    torch.testing.assert_close(layer(x), x @ dense + layer.bias, rtol=1e-10, atol=1e-10)
    # the dense matrix is the contraction of the cores over the (input modes, output modes) tensor
    full = layer.cores[0]
    for core in layer.cores[1:]:
        full = torch.tensordot(full, core, dims=([full.dim() - 1], [0]))
    torch.testing.assert_close(full.reshape(shape), dense)


def test_parameter_count_of_the_official_shape():
    """d = 4096, bottleneck 64, TT-rank 5, 3 modes per side: cores 16x16x16 | 4x4x4 with ranks
    [1, 5, 5, 5, 5, 4, 1]: 80 + 400 + 400 + 100 + 80 + 16 = 1076 per matrix (the up matrix's ranks
    [1, 4, 5, 5, 5, 5, 1] give 16 + 80 + 100 + 400 + 400 + 80), plus the biases 64 and 4096."""
    adapter = TTAdapter(4096, bottleneck=64, tt_rank=5, order=3)
    assert adapter.down.ranks == [1, 5, 5, 5, 5, 4, 1] and adapter.up.ranks == [1, 4, 5, 5, 5, 5, 1]
    assert sum(p.numel() for p in adapter.down.parameters()) == 1076 + 64
    assert sum(p.numel() for p in adapter.up.parameters()) == 1076 + 4096
    dense_adapter = 2 * 4096 * 64 + 64 + 4096
    assert sum(p.numel() for p in adapter.parameters()) * 80 < dense_adapter


def test_adapter_forward_is_the_bottleneck_formula_and_starts_as_the_identity():
    adapter = TTAdapter(96, bottleneck=12, tt_rank=3)
    h = torch.randn(5, 96)
    assert torch.equal(adapter(h), h)  # the up matrix starts at zero
    randomized(adapter.up)
    down, up = adapter.down, adapter.up
    expected = h + torch.relu(h @ down.to_dense() + down.bias) @ up.to_dense() + up.bias
    torch.testing.assert_close(adapter(h), expected, rtol=1e-5, atol=1e-5)
    assert adapter(h.bfloat16()).dtype == torch.bfloat16


def test_initial_scale_follows_the_official_target():
    """Entries of W have variance 1 / (in + out) in expectation over the cores' draws."""
    torch.manual_seed(0)
    with torch.no_grad():
        variances = [TTLinear(256, 64, tt_rank=5).to_dense().var() for _ in range(200)]
    assert abs(float(torch.stack(variances).mean()) * (256 + 64) - 1) < 0.25


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = torch.nn.Linear(16, 16)
        self.output = torch.nn.Module()
        self.output.dense = torch.nn.Linear(16, 16)

    def forward(self, x):
        return self.output.dense(torch.tanh(self.attention(x)))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block() for _ in range(2))
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_add_tt_adapters_wraps_the_named_layers_and_freezes_the_rest():
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(4, 16)
    before, keys_before = net(x), set(net.state_dict())
    adapters = add_tt_adapters(net, targets=["output.dense"], bottleneck=4, tt_rank=2, trainable=["head"])
    assert sorted(adapters) == ["blocks.0.output.dense", "blocks.1.output.dense"]
    torch.testing.assert_close(net(x), before)  # identity at the start
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".tt_adapter." in n or n.startswith("head.")}
    assert {"head.weight", "head.bias"} <= trainable and len(trainable) > 2
    assert keys_before <= set(net.state_dict())  # the base model's keys are unchanged

    net(x).sum().backward()  # gradients reach the cores through the contraction
    assert all(p.grad is not None for a in adapters.values() for p in a.parameters())
    with torch.no_grad():
        randomized(adapters["blocks.0.output.dense"].up)
    assert not torch.allclose(net(x), before)
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        torch.testing.assert_close(clone(x), net(x))


def test_add_tt_adapters_errors():
    net = Net()
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        add_tt_adapters(net, targets=["query"])
    add_tt_adapters(net, targets="attention")
    with pytest.raises(ValueError, match="already has an adapter"):
        add_tt_adapters(net, targets="attention")
    with pytest.raises(ValueError, match="tt_rank"):
        TTAdapter(16, bottleneck=4, tt_rank=0)
    with pytest.raises(ValueError, match="last dimension 16"):
        TTLinear(16, 4)(torch.randn(3, 15))


def test_adapters_are_cheap_next_to_the_layer_they_adapt():
    adapter = TTAdapter(768, bottleneck=64, tt_rank=5)
    assert sum(p.numel() for p in adapter.parameters()) < 0.02 * 768 * 768
    assert math.prod(adapter.down.in_modes) == 768 and math.prod(adapter.up.out_modes) == 768
