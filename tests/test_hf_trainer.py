"""``lorenza.hf.Trainer``: a lorenza optimizer chosen with ``optimizer_cls_and_kwargs`` gets its
param groups from the model (the head, embeddings and norms plain; ``optim_target_modules``
honoured) and its hyperparameters from ``TrainingArguments``, and trains a small LLaMA."""
import pytest
import torch

import lorenza

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
hf = pytest.importorskip("lorenza.hf")

VOCAB, CONTEXT = 64, 16


def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


class Counting(torch.utils.data.Dataset):
    """Sequences counting up from a random start (mod the vocabulary): learnable in a few steps."""

    def __init__(self, size=64):
        gen = torch.Generator().manual_seed(0)
        starts = torch.randint(0, VOCAB, (size, 1), generator=gen)
        self.tokens = (starts + torch.arange(CONTEXT)) % VOCAB

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def arguments(tmp_path, **kw):
    kw = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True,
              logging_steps=1, save_strategy="no", disable_tqdm=True, **kw)
    return transformers.TrainingArguments(**kw)


def names_of(model, params) -> set:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_groups_and_hyperparameters_come_from_the_model_and_the_arguments(tmp_path):
    model = tiny_llama()
    args = arguments(tmp_path, learning_rate=3e-3, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95,
                     adam_epsilon=1e-7)
    opt = hf.Trainer(model, args, optimizer_cls_and_kwargs=(lorenza.LowRankAdamW, {"rank": 8})).create_optimizer()
    projected, decay, no_decay = opt.param_groups
    assert projected["rank"] == 8 and decay["rank"] is None and no_decay["rank"] is None
    assert len(projected["params"]) == 2 * 7  # q, k, v, o, gate, up, down of 2 layers
    assert names_of(model, decay["params"]) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert all("norm" in n for n in names_of(model, no_decay["params"])) and no_decay["weight_decay"] == 0.0
    for group in opt.param_groups:
        assert group["lr"] == 3e-3 and group["betas"] == (0.8, 0.95) and group["eps"] == 1e-7
    assert projected["weight_decay"] == decay["weight_decay"] == 0.1
    given = (lorenza.ProjFactor, {"lr": 1e-2, "rank": 4})  # the keywords win over the arguments
    opt = hf.Trainer(tiny_llama(), args, optimizer_cls_and_kwargs=given).create_optimizer()
    assert opt.param_groups[0]["lr"] == 1e-2 and opt.param_groups[0]["rank"] == 4


@pytest.mark.parametrize("targets, expected", [(["q_proj", "v_proj"], 4), (r".*\.mlp\.down_proj", 2),
                                               ("all-linear", 14)])
def test_optim_target_modules_choose_the_projected_weights(tmp_path, targets, expected):
    model = tiny_llama()
    args = arguments(tmp_path, optim_target_modules=targets)
    opt = hf.Trainer(model, args, optimizer_cls_and_kwargs=(lorenza.LowRankAdamW, {"rank": 8})).create_optimizer()
    projected = [g for g in opt.param_groups if g["rank"] is not None]
    assert len(projected) == 1 and len(projected[0]["params"]) == expected
    assert all(p.dim() == 2 and "lm_head" not in n for n in names_of(model, projected[0]["params"])
               for p in projected[0]["params"])


def test_a_small_llama_trains_at_the_arguments_learning_rate(tmp_path):
    model = tiny_llama()
    trainer = hf.Trainer(model, arguments(tmp_path, learning_rate=1e-2, max_steps=30, lr_scheduler_type="constant"),
                         train_dataset=Counting(), optimizer_cls_and_kwargs=(lorenza.LowRankAdamW, {"rank": 8}))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 30 and losses[0] > 3.5  # ln 64 = 4.16 at the start
    assert losses[-1] < 1.0  # 4.16 to 0.04 on this machine: a fall noise cannot give
    assert all(group["lr"] == 1e-2 for group in trainer.optimizer.param_groups)


def test_a_closure_optimizer_is_refused_before_any_forward_pass(tmp_path):
    trainer = hf.Trainer(tiny_llama(), arguments(tmp_path), optimizer_cls_and_kwargs=(lorenza.Lorenza, {}))
    with pytest.raises(ValueError, match="Lorenza steps with a closure"):
        trainer.create_optimizer()
