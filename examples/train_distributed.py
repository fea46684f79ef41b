"""The main job's model (examples/train_tiny_lm.py) trained data-parallel with torchrun, under FSDP2
(``fully_shard`` per block) or DDP, with a DCP checkpoint saved at the end and resumed with
``--resume``. The optimizer code is the single-process code: lorenza agrees on the seed, averages the
probe losses and shards its own state (docs/distributed.md).

    torchrun --nproc_per_node 2 examples/train_distributed.py [--engine fsdp|ddp]
        [--optimizer LowRankAdamW|Lorenza|AdaZoSAM|ProjFactor|MeZO|LOZO|AdaZeta] [--split-queries]
        [--steps 20] [--out runs/distributed] [--resume]

gloo on CPUs, NCCL on GPUs (one per rank). Each rank trains on its share of every batch (with
``--split-queries``, AdaZeta's ranks share out its queries instead, each on the whole batch); rank 0
prints the loss of each step (the whole batch's) and the optimizer state this rank holds.
"""
import argparse
import gc
import os
import pathlib

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel
from train_tiny_lm import CONFIGS, TinyLM, batches, lm_loss, stdlib_bytes

import lorenza

ZEROTH_ORDER = ("MeZO", "LOZO", "AdaZeta")
OPTIMIZERS = ("LowRankAdamW", "Lorenza", "AdaZoSAM", "ProjFactor", *ZEROTH_ORDER)
CLOSURE_STEP = ("Lorenza", "AdaZoSAM", *ZEROTH_ORDER)
ZO_LR = 1e-3  # a model trained from scratch, where fine-tuning takes 1e-6 to 1e-4


def make_optimizer(name: str, groups: list, split_queries: bool = False):
    """``name`` on the model's param groups (AdaZoSAM and the zeroth-order ones on every parameter:
    their probes move every weight)."""
    params = [p for g in groups for p in g["params"]]
    return {
        "LowRankAdamW": lambda: lorenza.LowRankAdamW(groups, lr=5e-3),
        "Lorenza": lambda: lorenza.Lorenza(groups, lr=5e-3),
        "AdaZoSAM": lambda: lorenza.AdaZoSAM(params, lr=3e-3),
        "ProjFactor": lambda: lorenza.ProjFactor(groups, lr=3e-3),
        "MeZO": lambda: lorenza.MeZO(params, lr=ZO_LR),
        "LOZO": lambda: lorenza.LOZO(params, lr=ZO_LR, rank=2, nu=10),
        # an "epoch" a step, to reach 4 queries a step quickly: 1, 1, 2, 3, 4, 4, ...
        "AdaZeta": lambda: lorenza.AdaZeta(params, lr=ZO_LR, steps_per_epoch=1, shrink=1.0, rate=1.0, q_max=4,
                                           split_queries=split_queries),
    }[name]()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=("fsdp", "ddp"), default="fsdp")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="Lorenza")
    p.add_argument("--split-queries", action="store_true",
                   help="AdaZeta: each rank evaluates its share of the queries on the whole batch (DDP only)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="global batch (split over the ranks)")
    p.add_argument("--rank", type=int, default=24)
    p.add_argument("--update-gap", type=int, default=10)
    p.add_argument("--out", default="runs/distributed", help="the DCP checkpoint goes to OUT/checkpoint")
    p.add_argument("--resume", action="store_true", help="start from OUT/checkpoint")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # the ranks share the CPU
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the {world} ranks")

    torch.manual_seed(0)  # the same model on every rank
    config = CONFIGS["tiny"]
    model = TinyLM(**config).to(device)
    if args.engine == "fsdp":
        mesh = init_device_mesh(device.type, (world,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        forward = model
    elif args.split_queries:  # ranks run different numbers of forward passes: no DDP forward (a collective)
        forward = model
    else:
        forward = DistributedDataParallel(model)
    if args.split_queries and (args.optimizer != "AdaZeta" or args.engine != "ddp"):
        raise SystemExit("--split-queries is AdaZeta's, under --engine ddp (FSDP2's shards move together)")
    groups = lorenza.param_groups(model, rank=args.rank, update_gap=args.update_gap)
    opt = make_optimizer(args.optimizer, groups, args.split_queries)

    checkpoint = str(pathlib.Path(args.out) / "checkpoint")
    start = 0
    if args.resume:
        model_state, optim_state = get_state_dict(model, opt)
        state = {"model": model_state, "optim": optim_state, "step": torch.tensor(0)}
        dcp.load(state, checkpoint_id=checkpoint)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        start = int(state["step"])

    data = torch.frombuffer(bytearray(stdlib_bytes(1 << 20)), dtype=torch.uint8).long()
    stream = batches(data, args.batch, config["context"], torch.Generator().manual_seed(1))
    share = slice(rank * args.batch // world, (rank + 1) * args.batch // world)
    if args.split_queries:
        share = slice(None)  # the queries are split, not the batch
    for _ in range(start):  # the batches already trained on
        next(stream)
    for step in range(start, start + args.steps):
        x, y = (t[share].to(device) for t in next(stream))
        if args.optimizer in CLOSURE_STEP:
            loss = opt.step(lambda: lm_loss(forward, x, y))  # averaged over the ranks by the optimizer
        else:
            opt.zero_grad()
            loss = lm_loss(forward, x, y)
            loss.backward()
            opt.step()
            loss = loss.detach()
            dist.all_reduce(loss)  # for printing only: the whole batch's loss
            loss /= world
        if rank == 0:
            print(f"step {step + 1}: loss {float(loss):.4f}", flush=True)

    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state, "step": torch.tensor(start + args.steps)},
             checkpoint_id=checkpoint)
    if rank == 0:
        print(f"{args.optimizer} under {args.engine} on {world} ranks: state on this rank "
              f"{lorenza.state_bytes(opt) / 2**20:.2f} MiB; checkpoint in {checkpoint}", flush=True)
    del forward  # DDP's reducer goes before the process group it uses,
    gc.collect()
    dist.barrier()  # and no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
