"""``torch.distributed.checkpoint`` with the first-order optimizers under FSDP2: ``get_state_dict`` of a
fresh optimizer (DCP's initialising step), ``dcp.save``/``dcp.load`` and ``set_state_dict`` resume
bit-identically on the same world size, and to rounding on 3 ranks and in one plain process."""
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp
from lorenza.testing.processes import run
from sharded_model import CLOSURE_STEP, OPTIMIZERS, batch, make_model, optimizer, shard, take_step, whole
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

GAP, SAVED_AT, STEPS = 3, 4, 8  # refreshes at steps 0, 3 and 6, on both sides of the checkpoint
TOLERANCE = 2e-5  # as tests/test_distributed_fsdp.py


def save(model, opt, directory) -> None:
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=directory)


def train_and_save(rank, world_size, root):
    """Every optimizer saved fresh and after ``SAVED_AT`` steps; its weights after ``STEPS``."""
    results = {}
    for name in OPTIMIZERS:
        model = shard(make_model(), world_size)
        opt = optimizer(name, model, GAP)
        save(model, opt, os.path.join(root, name, "fresh"))
        for step in range(STEPS):
            if step == SAVED_AT:
                save(model, opt, os.path.join(root, name, "saved"))
            take_step(model, opt, *batch(rank, world_size, step), name in CLOSURE_STEP)
        results[name] = whole(model)
    return results


def resume(rank, world_size, root):
    """Every optimizer's weights after ``STEPS``, resumed from each checkpoint into a fresh model
    (weights zeroed) and optimizer."""
    results = {}
    for name in OPTIMIZERS:
        for kind, start in (("fresh", 0), ("saved", SAVED_AT)):
            model = shard(make_model(), world_size)
            with torch.no_grad():
                for param in model.parameters():
                    param.zero_()
            opt = optimizer(name, model, GAP)
            model_state, optim_state = get_state_dict(model, opt)
            state = {"model": model_state, "optim": optim_state}
            dcp.load(state, checkpoint_id=os.path.join(root, name, kind))
            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
            for step in range(start, STEPS):
                take_step(model, opt, *batch(rank, world_size, step), name in CLOSURE_STEP)
            results[name, kind] = whole(model)
    return results


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # the plain process loads alone
def test_checkpoints_resume_exactly_on_two_ranks_and_to_rounding_on_three_and_one(tmp_path):
    root = str(tmp_path)
    uninterrupted = run(train_and_save, 2, root, timeout=300)[0]
    same = run(resume, 2, root, timeout=300)
    three = run(resume, 3, root, timeout=300)
    one = resume(0, 1, root)
    for name in OPTIMIZERS:
        for kind in ("fresh", "saved"):
            assert torch.equal(same[0][name, kind], uninterrupted[name]), (name, kind)
            assert torch.equal(same[1][name, kind], uninterrupted[name]), (name, kind)
            for resumed in (three[0][name, kind], one[name, kind]):
                distance = float((resumed - uninterrupted[name]).norm() / uninterrupted[name].norm())
                assert distance < TOLERANCE, (name, kind, distance)
