"""``lorenza.param_groups`` on Hugging Face models: the output head and the embeddings are found
through the model's API (whatever their names, tied or not) and through PEFT's wrappers, and PEFT's
LoRA matrices stay plain."""
import pytest
import torch
from hf_models import tiny_llama

import lorenza

transformers = pytest.importorskip("transformers")


def projected_names(model, rank=8) -> set:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in lorenza.param_groups(model, rank=rank) if g["rank"] for p in g["params"]}


@pytest.mark.parametrize("tie", [False, True])
def test_a_llama_projects_its_attention_and_mlp_weights_only(tie):
    model = tiny_llama(layers=1, tie=tie)
    expected = {f"model.layers.0.{part}.weight" for part in ("self_attn.q_proj", "self_attn.k_proj",
                                                             "self_attn.v_proj", "self_attn.o_proj",
                                                             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert projected_names(model) == expected


def test_the_output_head_is_found_through_the_models_api_whatever_its_name():
    model = tiny_llama(layers=1)
    model.proj_out = model.lm_head  # a head by another name: the model's API still names it
    del model.lm_head
    model.get_output_embeddings = lambda: model.proj_out
    assert not any("proj_out" in name for name in projected_names(model))
    assert "model.layers.0.mlp.up_proj.weight" in projected_names(model)


def test_a_peft_lora_model_projects_nothing_of_its_adapters_and_head():
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    model = peft.get_peft_model(tiny_llama(layers=1), lora)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("modules_to_save" in n for n in trainable)
    assert projected_names(model, rank=2) == set()  # LoRA's A and B, and the head's trainable copy
    unfrozen = peft.get_peft_model(tiny_llama(layers=1), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    for name, param in unfrozen.named_parameters():
        param.requires_grad_("up_proj" in name or "lora_" in name)  # a wrapped model trained beside LoRA
    assert projected_names(unfrozen, rank=2) == {"base_model.model.model.layers.0.mlp.up_proj.weight"}


def test_a_group_that_names_a_rank_but_projects_nothing_warns():
    small, bias = torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(6))
    with pytest.warns(UserWarning, match="param group 0 has rank=8 but projects none of its 2 parameters"):
        lorenza.LowRankAdamW([{"params": [small, bias], "rank": 8}])
    lorenza.LowRankAdamW([{"params": [small], "rank": 2}, {"params": [bias]}])  # projects: no warning
