"""``torch.distributed.checkpoint`` with every optimizer under FSDP2 and DDP (the zeroth-order ones
on the replicated model's forward): ``get_state_dict`` of a fresh optimizer (DCP's initialising
step), ``dcp.save``/``dcp.load`` and ``set_state_dict`` resume bit-identically on the same world size
and engine, and to rounding on 3 ranks and in one plain process."""
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp
from sharded_model import (CLOSURE_STEP, OPTIMIZERS, ZEROTH_ORDER, batch, make_model, optimizer, shard,
                           take_step, whole)
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from lorenza.testing.processes import run

GAP, SAVED_AT, STEPS = 3, 4, 8  # refreshes at steps 0, 3 and 6, on both sides of the checkpoint
# as tests/test_distributed_fsdp.py and tests/test_distributed_zeroth_order.py
TOLERANCE = dict({name: 2e-5 for name in OPTIMIZERS}, **{name: 1e-4 for name in ZEROTH_ORDER})


def save(model, opt, directory) -> None:
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=directory)


def train_and_save(rank, world_size, root, engine):
    """Every optimizer saved fresh and after ``SAVED_AT`` steps; its weights after ``STEPS``."""
    results = {}
    for name in TOLERANCE:
        model = make_model()
        forward = shard(model, world_size, engine)
        opt = optimizer(name, model, GAP)
        save(forward, opt, os.path.join(root, name, "fresh"))
        for step in range(STEPS):
            if step == SAVED_AT:
                save(forward, opt, os.path.join(root, name, "saved"))
            take_step(forward, opt, *batch(rank, world_size, step), name in CLOSURE_STEP)
        results[name] = whole(model)
    return results


def resume(rank, world_size, root, engine):
    """Every optimizer's weights after ``STEPS``, resumed from each checkpoint into a fresh model
    (weights zeroed) and optimizer."""
    results = {}
    for name in TOLERANCE:
        for kind, start in (("fresh", 0), ("saved", SAVED_AT)):
            model = make_model()
            with torch.no_grad():
                for param in model.parameters():
                    param.zero_()
            forward = shard(model, world_size, engine)
            opt = optimizer(name, model, GAP)
            model_state, optim_state = get_state_dict(forward, opt)
            state = {"model": model_state, "optim": optim_state}
            dcp.load(state, checkpoint_id=os.path.join(root, name, kind))
            set_state_dict(forward, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
            for step in range(start, STEPS):
                take_step(forward, opt, *batch(rank, world_size, step), name in CLOSURE_STEP)
            results[name, kind] = whole(model)
    return results


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # the plain process loads alone
@pytest.mark.parametrize("engine", ["fsdp", "ddp"])
def test_checkpoints_resume_exactly_on_two_ranks_and_to_rounding_on_three_and_one(engine, tmp_path):
    root = str(tmp_path)
    uninterrupted = run(train_and_save, 2, root, engine, timeout=300)[0]
    same = run(resume, 2, root, engine, timeout=300)
    others = run(resume, 3, root, "fsdp", timeout=300)[:1] if engine == "fsdp" else []
    others.append(resume(0, 1, root, engine))
    for name in TOLERANCE:
        for kind in ("fresh", "saved"):
            assert torch.equal(same[0][name, kind], uninterrupted[name]), (name, kind)
            assert torch.equal(same[1][name, kind], uninterrupted[name]), (name, kind)
            for resumed in (other[name, kind] for other in others):
                distance = float((resumed - uninterrupted[name]).norm() / uninterrupted[name].norm())
                assert distance < TOLERANCE[name], (name, kind, distance)
